//! `sms.tencent`: Tencent Cloud SMS, action `SendSms`, version 2021-01-11, signed with
//! TC3-HMAC-SHA256.
//!
//! One `send` is one `POST /` with a JSON body for one number
//! (`PhoneNumberSet: ["+86…"]`), the vendor template mapped from the message's Herald
//! template, and `SessionContext` = the delivery id. Tencent answers HTTP 200 with either a
//! top-level `Response.Error` or a per-number `SendStatusSet`; both codes go through one
//! [`classify`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::clock::{self, Clock, SystemClock};
use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, Defaults, ErrorKind,
    Health, Outgoing,
};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::common::{
    check_base_url, config_error, data_value, default_timeout, e164, host_header, id_string, parse,
    parse_timeout, read_body, request_error, required, retry_after_of, template_name, unmapped,
    vendor_text, AccountHealth, Failure, Secret, Verdict, USER_AGENT,
};

pub(crate) const DEFAULT_ENDPOINT: &str = "https://sms.tencentcloudapi.com";
const SERVICE: &str = "sms";
const ACTION: &str = "SendSms";
const VERSION: &str = "2021-01-11";
const DEFAULT_REGION: &str = "ap-guangzhou";
/// Sent and signed exactly like this.
const CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// `retry_after` for the 30-second per-number limit.
const SHORT_LIMIT_RETRY_SECS: u64 = 60;
/// `retry_after` for the other per-number, frequency and daily limits.
const LONG_LIMIT_RETRY_SECS: u64 = 3600;
/// SendSms's documented default request rate: 3000 per second.
const API_RATE_PER_SECOND: u32 = 3000;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `[channels.<name>]` of kind `sms.tencent`, minus `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    secret_id: String,
    secret_key: Secret,
    #[serde(deserialize_with = "id_string")]
    sms_sdk_app_id: String,
    /// The default `SignName` (required by Tencent for mainland numbers; international
    /// messages have none). A template may override it.
    #[serde(default)]
    sign_name: Option<String>,
    templates: BTreeMap<String, TemplateConfig>,
    #[serde(default = "default_endpoint")]
    endpoint: String,
    /// `X-TC-Region`.
    #[serde(default = "default_region")]
    region: String,
    #[serde(default = "default_timeout")]
    timeout: String,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}

fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}

/// `templates.<herald template>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateConfig {
    #[serde(deserialize_with = "id_string")]
    template_id: String,
    /// Herald data keys, in the order of the template's `{1}`, `{2}`, … placeholders.
    #[serde(default)]
    params: Vec<String>,
    #[serde(default)]
    sign_name: Option<String>,
}

#[derive(Debug)]
struct Template {
    template_id: String,
    params: Vec<String>,
    sign_name: Option<String>,
}

pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    let cfg: Config = parse(&ctx)?;
    let mut channel = TencentSms::new(ctx.name, cfg)?;
    channel.clock = clock::from_services(ctx.services);
    Ok(Arc::new(channel))
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

pub(crate) struct TencentSms {
    secret_id: String,
    secret_key: Secret,
    sms_sdk_app_id: String,
    sign_name: Option<String>,
    templates: BTreeMap<String, Template>,
    endpoint: reqwest::Url,
    /// `host` as signed (and as reqwest sends it).
    host: String,
    region: String,
    http: reqwest::Client,
    health: AccountHealth,
    /// The signature's timestamp (the SDK's clock, from the services; the system clock by
    /// default).
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TencentSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TencentSms")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("secret_id", &self.secret_id)
            .field("secret_key", &self.secret_key)
            .field("sms_sdk_app_id", &self.sms_sdk_app_id)
            .field("sign_name", &self.sign_name)
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The JSON body of `SendSms`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SendSms<'a> {
    phone_number_set: [&'a str; 1],
    sms_sdk_app_id: &'a str,
    template_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sign_name: Option<&'a str>,
    template_param_set: Vec<String>,
    session_context: String,
}

impl TencentSms {
    fn new(name: &str, cfg: Config) -> Result<Self, ConfigError> {
        let secret_id = required(name, "secret_id", &cfg.secret_id)?;
        if cfg.secret_key.expose().trim().is_empty() {
            return Err(config_error(name, "secret_key", "must not be empty"));
        }
        let sms_sdk_app_id = required(name, "sms_sdk_app_id", &cfg.sms_sdk_app_id)?;
        let sign_name = match cfg.sign_name {
            Some(s) => Some(required(name, "sign_name", &s)?),
            None => None,
        };
        if cfg.templates.is_empty() {
            return Err(config_error(
                name,
                "templates",
                "map at least one Herald template to a Tencent template_id",
            ));
        }
        let mut templates = BTreeMap::new();
        for (herald, t) in cfg.templates {
            let key = |k: &str| format!("templates.{herald}.{k}");
            if herald.trim().is_empty() {
                return Err(config_error(name, "templates", "a template name is empty"));
            }
            let template_id = required(name, &key("template_id"), &t.template_id)?;
            if t.params.iter().any(|p| p.trim().is_empty()) {
                return Err(config_error(
                    name,
                    &key("params"),
                    "data keys must not be empty",
                ));
            }
            let sign_name = match t.sign_name {
                Some(s) => Some(required(name, &key("sign_name"), &s)?),
                None => None,
            };
            templates.insert(
                herald,
                Template {
                    template_id,
                    params: t.params,
                    sign_name,
                },
            );
        }
        let endpoint = check_base_url(name, "endpoint", &cfg.endpoint)?;
        let region = required(name, "region", &cfg.region)?;
        let timeout = parse_timeout(name, &cfg.timeout)?;
        Ok(Self {
            secret_id,
            secret_key: cfg.secret_key,
            sms_sdk_app_id,
            sign_name,
            templates,
            host: host_header(&endpoint),
            endpoint,
            region,
            http: http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?,
            health: AccountHealth::new(name),
            clock: Arc::new(SystemClock),
        })
    }

    /// The request body for one delivery, exactly as it is signed and sent.
    fn body(&self, out: &Outgoing) -> Result<Vec<u8>, ChannelError> {
        let phone = e164(out)?;
        let name = template_name(out)?;
        let template = self.templates.get(name).ok_or_else(|| unmapped(name))?;
        let data = out.message.data.as_ref();
        let template_param_set = template
            .params
            .iter()
            .map(|key| data_value(data, key, name))
            .collect::<Result<Vec<_>, _>>()?;
        let body = SendSms {
            phone_number_set: [phone],
            sms_sdk_app_id: &self.sms_sdk_app_id,
            template_id: &template.template_id,
            sign_name: template.sign_name.as_deref().or(self.sign_name.as_deref()),
            template_param_set,
            session_context: out.delivery_id.to_string(),
        };
        serde_json::to_vec(&body)
            .map_err(|e| ChannelError::permanent(format!("cannot encode the request: {e}")))
    }

    /// The `Authorization` header for `payload` sent at `timestamp` (Unix seconds).
    fn authorization(&self, payload: &[u8], timestamp: i64) -> Result<String, ChannelError> {
        let date = utc_date(timestamp)?;
        let headers = [("content-type", CONTENT_TYPE), ("host", self.host.as_str())];
        let (canonical, signed_headers) = tc3_canonical_request("POST", "/", "", &headers, payload);
        let string_to_sign = tc3_string_to_sign(timestamp, &date, SERVICE, &canonical);
        let signature = tc3_signature(self.secret_key.expose(), &date, SERVICE, &string_to_sign);
        Ok(format!(
            "TC3-HMAC-SHA256 Credential={}/{date}/{SERVICE}/tc3_request, \
             SignedHeaders={signed_headers}, Signature={signature}",
            self.secret_id
        ))
    }

    async fn attempt(&self, out: &Outgoing) -> Result<Accepted, Failure> {
        let body = self.body(out)?;
        let timestamp = time::OffsetDateTime::from(self.clock.wall()).unix_timestamp();
        let authorization = self.authorization(&body, timestamp)?;
        let response = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("X-TC-Action", ACTION)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Region", &self.region)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .body(body)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        let body = read_body(response).await?;
        self.interpret(status, &body)
            .map_err(|f| f.honour_retry_after(retry_after))
    }

    fn interpret(&self, status: u16, body: &[u8]) -> Result<Accepted, Failure> {
        let hide = [self.secret_id.as_str()];
        let Ok(Envelope { response }) = serde_json::from_slice::<Envelope>(body) else {
            return Err(classify(status, None).error(
                None,
                format!("Tencent answered HTTP {status} without a readable Response"),
            ));
        };
        if let Some(error) = response.error {
            let message = format!(
                "Tencent: {}",
                vendor_text(error.message.as_deref().unwrap_or("(no message)"), &hide)
            );
            return Err(classify(status, Some(&error.code)).error(Some(&error.code), message));
        }
        let Some(number) = response.send_status_set.into_iter().next() else {
            return Err(classify(status, None).error(
                None,
                "Tencent answered without a SendStatus for the number".into(),
            ));
        };
        if number.code == "Ok" {
            return Ok(Accepted::Sent {
                provider_id: number.serial_no.filter(|s| !s.is_empty()),
            });
        }
        let message = format!(
            "Tencent: {}",
            vendor_text(number.message.as_deref().unwrap_or("(no message)"), &hide)
        );
        Err(classify(status, Some(&number.code)).error(Some(&number.code), message))
    }
}

#[async_trait]
impl Channel for TencentSms {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        let result = self.attempt(out).await;
        self.health.observe(result)
    }

    fn health(&self) -> Health {
        self.health.health()
    }

    fn defaults(&self) -> Defaults {
        Defaults::default().rate_limit(API_RATE_PER_SECOND, Duration::from_secs(1))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    response: Response,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Response {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    send_status_set: Vec<SendStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiError {
    code: String,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendStatus {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    serial_no: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------

/// Tencent's `Response.Error.Code` or per-number `SendStatusSet[].Code` → what the
/// dispatcher does (`"Ok"` never reaches here; `code` is `None` for an unreadable reply).
///
/// | code | outcome |
/// |---|---|
/// | `RequestLimitExceeded*`, `InternalError.Timeout`, `InternalError.SendAndRecvFail` | transient |
/// | `LimitExceeded.PhoneNumberThirtySecondLimit` | rate_limited, retry after 60 s |
/// | other `LimitExceeded.PhoneNumber*Limit`, `LimitExceeded.DeliveryFrequencyLimit`, daily limits, `FailedOperation.MarketingSendTimeConstraint` | rate_limited, retry after 1 h |
/// | `LimitExceeded.PhoneNumberCountLimit` (over 200 numbers; never sent) | permanent |
/// | `InvalidParameterValue.IncorrectPhoneNumber`, `FailedOperation.PhoneNumberInBlacklist` | bad_recipient |
/// | template, signature and content refusals | permanent |
/// | `FailedOperation.InsufficientBalanceInSmsPackage`, `UnauthorizedOperation.*`, `AuthFailure.*`, `InvalidParameterValue.SdkAppIdNotExist` | config, instance down |
/// | any other code | transient, code kept |
/// | no code: 429 / 401, 403, 404, 405 / other 4xx / 5xx and the rest | rate_limited / config / permanent / transient |
pub(crate) fn classify(status: u16, code: Option<&str>) -> Verdict {
    use ErrorKind::*;
    let Some(code) = code else {
        return match status {
            429 => Verdict::of(RateLimited),
            401 | 403 | 404 | 405 => Verdict::of(Config),
            400..=499 => Verdict::of(Permanent),
            _ => Verdict::of(Transient),
        };
    };
    match code {
        c if c.starts_with("RequestLimitExceeded") => Verdict::of(Transient),
        "InternalError.Timeout" | "InternalError.SendAndRecvFail" => Verdict::of(Transient),
        "LimitExceeded.PhoneNumberCountLimit" => Verdict::of(Permanent),
        "LimitExceeded.PhoneNumberThirtySecondLimit" => {
            Verdict::of(RateLimited).after(SHORT_LIMIT_RETRY_SECS)
        }
        c if c.starts_with("LimitExceeded.PhoneNumber") && c.ends_with("Limit") => {
            Verdict::of(RateLimited).after(LONG_LIMIT_RETRY_SECS)
        }
        "LimitExceeded.DeliveryFrequencyLimit"
        | "LimitExceeded.DailyLimit"
        | "LimitExceeded.AppDailyLimit"
        | "FailedOperation.MarketingSendTimeConstraint" => {
            Verdict::of(RateLimited).after(LONG_LIMIT_RETRY_SECS)
        }
        "InvalidParameterValue.IncorrectPhoneNumber" | "FailedOperation.PhoneNumberInBlacklist" => {
            Verdict::of(BadRecipient)
        }
        "FailedOperation.TemplateIncorrectOrUnapproved"
        | "FailedOperation.SignatureIncorrectOrUnapproved"
        | "FailedOperation.MissingTemplateList"
        | "FailedOperation.MissingSignatureList"
        | "FailedOperation.ContainSensitiveWord"
        | "InvalidParameterValue.ContentLengthLimit"
        | "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter"
        | "InvalidParameterValue.TemplateParameterFormatError"
        | "InvalidParameterValue.TemplateParameterLengthLimit"
        | "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber"
        | "UnsupportedOperation.UnsuportedRegion" => Verdict::of(Permanent),
        "FailedOperation.InsufficientBalanceInSmsPackage"
        | "InvalidParameterValue.SdkAppIdNotExist" => Verdict::of(Config).down(),
        c if c.starts_with("UnauthorizedOperation.") || c.starts_with("AuthFailure.") => {
            Verdict::of(Config).down()
        }
        _ => Verdict::of(Transient),
    }
}

// ---------------------------------------------------------------------------------------
// Signing (TC3-HMAC-SHA256)
// ---------------------------------------------------------------------------------------

/// `YYYY-MM-DD` (UTC) of a Unix timestamp: the credential scope's date.
fn utc_date(timestamp: i64) -> Result<String, ChannelError> {
    let at = time::OffsetDateTime::from_unix_timestamp(timestamp)
        .map_err(|e| ChannelError::transient(format!("bad timestamp: {e}")))?;
    at.format(&time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|e| ChannelError::transient(format!("cannot format the date: {e}")))
}

/// The canonical request and the signed-header list. `headers` are `(name, value)`, all of
/// them signed, in any order; names and values are lowercased and trimmed, as TC3 wants.
pub(crate) fn tc3_canonical_request(
    method: &str,
    uri: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> (String, String) {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{uri}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(payload))
    );
    (canonical, signed_headers)
}

/// `TC3-HMAC-SHA256\n<ts>\n<date>/<service>/tc3_request\n<hex sha256(canonical)>`.
pub(crate) fn tc3_string_to_sign(
    timestamp: i64,
    date: &str,
    service: &str,
    canonical: &str,
) -> String {
    format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

/// hex(HMAC(kSigning, string-to-sign)) with kDate = HMAC("TC3" + key, date),
/// kService = HMAC(kDate, service), kSigning = HMAC(kService, "tc3_request").
pub(crate) fn tc3_signature(
    secret_key: &str,
    date: &str,
    service: &str,
    string_to_sign: &str,
) -> String {
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, outgoing};
    use herald_channel::Services;

    /// Gold vector 4 (providers.md): TC3-HMAC-SHA256, cvm DescribeInstances.
    #[test]
    fn tc3_vector_describe_instances() {
        let payload = r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let timestamp = 1551113065;
        let date = utc_date(timestamp).unwrap();
        assert_eq!(date, "2019-02-25");
        let (canonical, signed) = tc3_canonical_request(
            "POST",
            "/",
            "",
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("host", "cvm.tencentcloudapi.com"),
            ],
            payload.as_bytes(),
        );
        assert_eq!(signed, "content-type;host");
        let sts = tc3_string_to_sign(timestamp, &date, "cvm", &canonical);
        assert_eq!(
            tc3_signature("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", &date, "cvm", &sts),
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        const HOUR: Option<Duration> = Some(Duration::from_secs(3600));
        const MINUTE: Option<Duration> = Some(Duration::from_secs(60));
        // (code, kind, retry_after, down); every code is returned with HTTP 200.
        let table: &[(&str, ErrorKind, Option<Duration>, bool)] = &[
            // providers.md
            ("RequestLimitExceeded", Transient, None, false),
            (
                "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
                Transient,
                None,
                false,
            ),
            (
                "RequestLimitExceeded.IPLimitExceeded",
                Transient,
                None,
                false,
            ),
            (
                "RequestLimitExceeded.UinLimitExceeded",
                Transient,
                None,
                false,
            ),
            ("InternalError.Timeout", Transient, None, false),
            ("InternalError.SendAndRecvFail", Transient, None, false),
            (
                "LimitExceeded.PhoneNumberThirtySecondLimit",
                RateLimited,
                MINUTE,
                false,
            ),
            (
                "LimitExceeded.PhoneNumberOneHourLimit",
                RateLimited,
                HOUR,
                false,
            ),
            (
                "LimitExceeded.PhoneNumberDailyLimit",
                RateLimited,
                HOUR,
                false,
            ),
            (
                "LimitExceeded.PhoneNumberSameContentDailyLimit",
                RateLimited,
                HOUR,
                false,
            ),
            (
                "LimitExceeded.DeliveryFrequencyLimit",
                RateLimited,
                HOUR,
                false,
            ),
            (
                "InvalidParameterValue.IncorrectPhoneNumber",
                BadRecipient,
                None,
                false,
            ),
            (
                "FailedOperation.PhoneNumberInBlacklist",
                BadRecipient,
                None,
                false,
            ),
            (
                "FailedOperation.TemplateIncorrectOrUnapproved",
                Permanent,
                None,
                false,
            ),
            (
                "FailedOperation.SignatureIncorrectOrUnapproved",
                Permanent,
                None,
                false,
            ),
            (
                "FailedOperation.InsufficientBalanceInSmsPackage",
                Config,
                None,
                true,
            ),
            (
                "UnauthorizedOperation.RequestIpNotInWhitelist",
                Config,
                None,
                true,
            ),
            (
                "UnauthorizedOperation.RequestPermissionDeny",
                Config,
                None,
                true,
            ),
            (
                "UnauthorizedOperation.SdkAppIdIsDisabled",
                Config,
                None,
                true,
            ),
            (
                "UnauthorizedOperation.SerivceSuspendDueToArrears",
                Config,
                None,
                true,
            ),
            (
                "UnauthorizedOperation.SmsSdkAppIdVerifyFail",
                Config,
                None,
                true,
            ),
            (
                "UnauthorizedOperation.IndividualUserMarketingSmsPermissionDeny",
                Config,
                None,
                true,
            ),
            // the brief: AuthFailure.* is an account problem too
            ("AuthFailure.SignatureFailure", Config, None, true),
            ("AuthFailure.SignatureExpire", Config, None, true),
            ("AuthFailure.SecretIdNotFound", Config, None, true),
            ("AuthFailure.InvalidSecretId", Config, None, true),
            // the SDK's error list
            (
                "LimitExceeded.PhoneNumberCountLimit",
                Permanent,
                None,
                false,
            ),
            ("LimitExceeded.DailyLimit", RateLimited, HOUR, false),
            ("LimitExceeded.AppDailyLimit", RateLimited, HOUR, false),
            (
                "FailedOperation.MarketingSendTimeConstraint",
                RateLimited,
                HOUR,
                false,
            ),
            (
                "FailedOperation.MissingTemplateList",
                Permanent,
                None,
                false,
            ),
            (
                "FailedOperation.MissingSignatureList",
                Permanent,
                None,
                false,
            ),
            (
                "FailedOperation.ContainSensitiveWord",
                Permanent,
                None,
                false,
            ),
            (
                "InvalidParameterValue.ContentLengthLimit",
                Permanent,
                None,
                false,
            ),
            (
                "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter",
                Permanent,
                None,
                false,
            ),
            (
                "InvalidParameterValue.TemplateParameterFormatError",
                Permanent,
                None,
                false,
            ),
            (
                "InvalidParameterValue.TemplateParameterLengthLimit",
                Permanent,
                None,
                false,
            ),
            (
                "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber",
                Permanent,
                None,
                false,
            ),
            (
                "UnsupportedOperation.UnsuportedRegion",
                Permanent,
                None,
                false,
            ),
            ("InvalidParameterValue.SdkAppIdNotExist", Config, None, true),
            // unknown codes: transient
            ("InternalError.OtherError", Transient, None, false),
            ("FailedOperation.SomethingNew", Transient, None, false),
        ];
        for &(code, kind, retry_after, down) in table {
            let v = classify(200, Some(code));
            assert_eq!(
                (v.kind, v.retry_after, v.down),
                (kind, retry_after, down),
                "{code}"
            );
        }
        // No readable Response.
        for (status, kind) in [
            (429, RateLimited),
            (401, Config),
            (404, Config),
            (400, Permanent),
            (500, Transient),
            (503, Transient),
            (200, Transient),
        ] {
            let v = classify(status, None);
            assert_eq!(
                (v.kind, v.retry_after, v.down),
                (kind, None, false),
                "{status}"
            );
        }
    }

    fn channel(config: serde_json::Value) -> Result<TencentSms, ConfigError> {
        let services = Services::default();
        let ctx = BuildContext {
            name: "tc",
            config: &config,
            services: &services,
        };
        TencentSms::new("tc", parse(&ctx)?)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "secret_id": "AKIDexample",
            "secret_key": "t0p-secret",
            "sms_sdk_app_id": 1400006666u64,
            "sign_name": "腾讯云",
            "templates": {
                "report_ready": {"template_id": 1110, "params": ["patient_name", "report_id"]},
                "hello": {"template_id": "2220", "sign_name": "Other"}
            }
        })
    }

    #[test]
    fn body_and_authorization() {
        let ch = channel(base()).unwrap();
        assert_eq!(ch.host, "sms.tencentcloudapi.com");
        assert_eq!(ch.region, "ap-guangzhou");
        assert!(!format!("{ch:?}").contains("t0p-secret"));
        let mut m = (*message("t", "c")).clone();
        m.template = Some("report_ready".into());
        m.data = Some(serde_json::json!({"patient_name": "张三", "report_id": 42}));
        let mut out = outgoing(Arc::new(m), "u", Some("+8613800000000"));
        out.delivery_id = 9;
        let body: serde_json::Value = serde_json::from_slice(&ch.body(&out).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "PhoneNumberSet": ["+8613800000000"],
                "SmsSdkAppId": "1400006666",
                "TemplateId": "1110",
                "SignName": "腾讯云",
                "TemplateParamSet": ["张三", "42"],
                "SessionContext": "9",
            })
        );
        let auth = ch.authorization(b"{}", 1551113065).unwrap();
        assert!(
            auth.starts_with(
                "TC3-HMAC-SHA256 Credential=AKIDexample/2019-02-25/sms/tc3_request, \
                 SignedHeaders=content-type;host, Signature="
            ),
            "{auth}"
        );

        let mut m = (*message("t", "c")).clone();
        m.template = Some("hello".into());
        let body: serde_json::Value = serde_json::from_slice(
            &ch.body(&outgoing(Arc::new(m), "u", Some("+447700900123")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(body["SignName"], "Other");
        assert_eq!(body["TemplateParamSet"], serde_json::json!([]));

        let mut m = (*message("t", "c")).clone();
        m.template = Some("nope".into());
        let err = ch
            .body(&outgoing(Arc::new(m), "u", Some("+8613800000000")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("`nope`"), "{err}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases: &[(serde_json::Value, &str)] = &[
            (serde_json::json!({"secret": "x"}), "unknown field `secret`"),
            (
                serde_json::json!({"sms_sdk_app_id": -1}),
                "sms_sdk_app_id: invalid type",
            ),
            (serde_json::json!({"templates": {}}), "templates:"),
            (
                serde_json::json!({"templates": {"t": {"template_id": 1, "params": [""]}}}),
                "templates.t.params:",
            ),
            (
                serde_json::json!({"region": ""}),
                "region: must not be empty",
            ),
            (
                serde_json::json!({"endpoint": "sms.tencentcloudapi.com"}),
                "endpoint:",
            ),
            (serde_json::json!({"timeout": "0s"}), "timeout:"),
            (
                serde_json::json!({"secret_key": ""}),
                "secret_key: must not be empty",
            ),
        ];
        for (patch, expected) in cases {
            let mut cfg = base();
            for (k, v) in patch.as_object().unwrap() {
                cfg[k] = v.clone();
            }
            let err = channel(cfg).unwrap_err().to_string();
            assert!(err.starts_with("channels.tc: "), "{patch}: {err}");
            assert!(err.contains(expected), "{patch}: {err}");
            assert!(!err.contains("t0p-secret"), "{err}");
        }
        let mut cfg = base();
        cfg.as_object_mut().unwrap().remove("sign_name");
        assert!(channel(cfg).is_ok(), "sign_name is optional");
    }

    #[test]
    fn replies() {
        let ch = channel(base()).unwrap();
        let ok = br#"{"Response":{"SendStatusSet":[{"SerialNo":"5000:1045710669157053657849499619","PhoneNumber":"+8613800000000","Fee":1,"SessionContext":"9","Code":"Ok","Message":"send success","IsoCode":"CN"}],"RequestId":"a0aabda6"}}"#;
        assert_eq!(
            ch.interpret(200, ok).unwrap(),
            Accepted::Sent {
                provider_id: Some("5000:1045710669157053657849499619".into())
            }
        );
        let per_number = br#"{"Response":{"SendStatusSet":[{"SerialNo":"","PhoneNumber":"+8613800000000","Fee":0,"Code":"LimitExceeded.PhoneNumberDailyLimit","Message":"limit for +8613800000000"}],"RequestId":"x"}}"#;
        let f = ch.interpret(200, per_number).unwrap_err();
        assert_eq!(f.error.kind(), ErrorKind::RateLimited);
        assert_eq!(f.error.code(), Some("LimitExceeded.PhoneNumberDailyLimit"));
        assert!(!f.error.message().contains("8613800000000"), "{}", f.error);
        let top = br#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated."},"RequestId":"x"}}"#;
        let f = ch.interpret(200, top).unwrap_err();
        assert_eq!((f.error.kind(), f.down), (ErrorKind::Config, true));
        let empty = br#"{"Response":{"SendStatusSet":[],"RequestId":"x"}}"#;
        assert_eq!(
            ch.interpret(200, empty).unwrap_err().error.kind(),
            ErrorKind::Transient
        );
        assert_eq!(
            ch.interpret(502, b"oops").unwrap_err().error.kind(),
            ErrorKind::Transient
        );
    }
}
