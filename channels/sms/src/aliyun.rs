//! `sms.aliyun`: Aliyun (Alibaba Cloud) SMS, `dysmsapi` action `SendSms`, version
//! 2017-05-25.
//!
//! One `send` is one `SendSms` call for one number with a pre-approved template
//! (`TemplateCode`) and signature (`SignName`), chosen by the message's Herald template
//! through the instance's `templates` table. Two signing schemes:
//!
//! * `signature = "v1"` (default): RPC v1, HMAC-SHA1. Every parameter, the common ones
//!   included, travels in a `POST` body of type `application/x-www-form-urlencoded`
//!   (rather than a GET query, so phone numbers and template values stay out of URLs and
//!   proxy logs), signed over `POST&%2F&<canonicalized parameters>`.
//! * `signature = "acs3"`: ACS3-HMAC-SHA256 (Aliyun's "V3"). The `SendSms` parameters are
//!   the query string of a `POST` with an empty body; the signature covers the canonical
//!   request and travels in the `Authorization` header.
//!
//! Replies are mapped in one place, [`classify`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use herald_channel::clock::{self, Clock, SystemClock};
use herald_channel::http::{http_client, MAX_CONNECT_TIMEOUT};
use herald_channel::{
    async_trait, Accepted, BuildContext, Channel, ChannelError, ConfigError, ErrorKind, Health,
    Outgoing,
};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::common::{
    check_base_url, config_error, data_value, default_timeout, e164, parse, parse_timeout,
    read_body, request_error, required, retry_after_of, scalar, template_name, unmapped,
    vendor_text, AccountHealth, Failure, Secret, Verdict, USER_AGENT,
};

pub(crate) const DEFAULT_ENDPOINT: &str = "https://dysmsapi.aliyuncs.com";
const ACTION: &str = "SendSms";
const VERSION: &str = "2017-05-25";
const DEFAULT_REGION: &str = "cn-hangzhou";
/// `retry_after` for per-number flow control (`isv.BUSINESS_LIMIT_CONTROL*`: by default 1
/// per minute, 5 per hour, 10 per day for one number) and the account's daily cap.
const FLOW_CONTROL_RETRY_SECS: u64 = 3600;
/// `retry_after` for the account's monthly cap.
const MONTH_LIMIT_RETRY_SECS: u64 = 24 * 3600;
/// hex(SHA-256("")), the `x-acs-content-sha256` of an empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Percent-encoding for Aliyun's POP signatures (RFC 3986): only `A-Za-z0-9-_.~` stay,
/// everything else becomes `%XX` (so space is `%20`, `*` is `%2A`).
const POP_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `[channels.<name>]` of kind `sms.aliyun`, minus `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    access_key_id: String,
    access_key_secret: Secret,
    /// The default `SignName`; a template may override it.
    sign_name: String,
    /// Herald template name → vendor template.
    templates: BTreeMap<String, TemplateConfig>,
    #[serde(default = "default_endpoint")]
    endpoint: String,
    #[serde(default)]
    signature: SignatureScheme,
    /// `RegionId` of RPC v1 requests.
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
    template_code: String,
    /// Vendor parameter ← Herald data key. Without it, every string or number field of the
    /// message's data is passed under its own name.
    #[serde(default)]
    params: Option<BTreeMap<String, String>>,
    #[serde(default)]
    sign_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SignatureScheme {
    /// RPC v1, HMAC-SHA1, parameters in a form body.
    #[default]
    V1,
    /// ACS3-HMAC-SHA256, parameters in the query, `Authorization` header.
    Acs3,
}

/// One mapped template, validated.
#[derive(Debug)]
struct Template {
    template_code: String,
    params: Option<BTreeMap<String, String>>,
    sign_name: Option<String>,
}

pub(crate) fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    let cfg: Config = parse(&ctx)?;
    let mut channel = AliyunSms::new(ctx.name, cfg)?;
    channel.clock = clock::from_services(ctx.services);
    Ok(Arc::new(channel))
}

// ---------------------------------------------------------------------------------------
// The channel
// ---------------------------------------------------------------------------------------

pub(crate) struct AliyunSms {
    access_key_id: String,
    secret: Secret,
    sign_name: String,
    templates: BTreeMap<String, Template>,
    endpoint: reqwest::Url,
    signature: SignatureScheme,
    region: String,
    http: reqwest::Client,
    health: AccountHealth,
    /// The signature's timestamp (the SDK's clock, from the services; the system clock by
    /// default).
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for AliyunSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AliyunSms")
            .field("endpoint", &self.endpoint.as_str())
            .field("signature", &self.signature)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &self.secret)
            .field("sign_name", &self.sign_name)
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AliyunSms {
    fn new(name: &str, cfg: Config) -> Result<Self, ConfigError> {
        let access_key_id = required(name, "access_key_id", &cfg.access_key_id)?;
        if cfg.access_key_secret.expose().trim().is_empty() {
            return Err(config_error(name, "access_key_secret", "must not be empty"));
        }
        let sign_name = required(name, "sign_name", &cfg.sign_name)?;
        if cfg.templates.is_empty() {
            return Err(config_error(
                name,
                "templates",
                "map at least one Herald template to an Aliyun template_code",
            ));
        }
        let mut templates = BTreeMap::new();
        for (herald, t) in cfg.templates {
            let key = |k: &str| format!("templates.{herald}.{k}");
            if herald.trim().is_empty() {
                return Err(config_error(name, "templates", "a template name is empty"));
            }
            let template_code = required(name, &key("template_code"), &t.template_code)?;
            if let Some(params) = &t.params {
                for (vendor, data_key) in params {
                    if vendor.trim().is_empty() || data_key.trim().is_empty() {
                        return Err(config_error(
                            name,
                            &key("params"),
                            "parameter names and data keys must not be empty",
                        ));
                    }
                }
            }
            let sign_name = match t.sign_name {
                Some(s) => Some(required(name, &key("sign_name"), &s)?),
                None => None,
            };
            templates.insert(
                herald,
                Template {
                    template_code,
                    params: t.params,
                    sign_name,
                },
            );
        }
        let endpoint = check_base_url(name, "endpoint", &cfg.endpoint)?;
        let region = required(name, "region", &cfg.region)?;
        let timeout = parse_timeout(name, &cfg.timeout)?;
        Ok(Self {
            access_key_id,
            secret: cfg.access_key_secret,
            sign_name,
            templates,
            endpoint,
            signature: cfg.signature,
            region,
            http: http_client(name, USER_AGENT, timeout.min(MAX_CONNECT_TIMEOUT), timeout)?,
            health: AccountHealth::new(name),
            clock: Arc::new(SystemClock),
        })
    }

    /// The `SendSms` parameters of one delivery (without the common ones).
    fn params(&self, out: &Outgoing) -> Result<BTreeMap<String, String>, ChannelError> {
        let phone = e164(out)?;
        let name = template_name(out)?;
        let template = self.templates.get(name).ok_or_else(|| unmapped(name))?;
        let mut params = BTreeMap::new();
        params.insert("PhoneNumbers".to_owned(), phone_numbers(phone));
        params.insert(
            "SignName".to_owned(),
            template
                .sign_name
                .clone()
                .unwrap_or_else(|| self.sign_name.clone()),
        );
        params.insert("TemplateCode".to_owned(), template.template_code.clone());
        if let Some(json) = template_param(template, name, out.message.data.as_ref())? {
            params.insert("TemplateParam".to_owned(), json);
        }
        params.insert("OutId".to_owned(), out.delivery_id.to_string());
        Ok(params)
    }

    /// RPC v1: the whole request as a signed form body.
    fn v1_body(
        &self,
        mut params: BTreeMap<String, String>,
        timestamp: &str,
        nonce: &str,
    ) -> String {
        for (k, v) in [
            ("AccessKeyId", self.access_key_id.as_str()),
            ("Action", ACTION),
            ("Format", "JSON"),
            ("RegionId", self.region.as_str()),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", nonce),
            ("SignatureVersion", "1.0"),
            ("Timestamp", timestamp),
            ("Version", VERSION),
        ] {
            params.insert(k.to_owned(), v.to_owned());
        }
        let signature = rpc_v1_signature("POST", &params, self.secret.expose());
        format!(
            "{}&Signature={}",
            canonicalized_query(&params),
            pop_encode(&signature)
        )
    }

    /// ACS3: the URL (parameters in the query) and the headers to set, `Authorization`
    /// included.
    fn acs3_request(
        &self,
        params: &BTreeMap<String, String>,
        date: &str,
        nonce: &str,
    ) -> (reqwest::Url, Vec<(String, String)>) {
        let query = canonicalized_query(params);
        let mut url = self.endpoint.clone();
        url.set_query(Some(&query));
        let mut headers = BTreeMap::new();
        for (k, v) in [
            ("host", crate::common::host_header(&url)),
            ("x-acs-action", ACTION.to_owned()),
            ("x-acs-content-sha256", EMPTY_SHA256.to_owned()),
            ("x-acs-date", date.to_owned()),
            ("x-acs-signature-nonce", nonce.to_owned()),
            ("x-acs-version", VERSION.to_owned()),
        ] {
            headers.insert(k.to_owned(), v);
        }
        let (canonical, signed_headers) =
            acs3_canonical_request("POST", url.path(), &query, &headers, EMPTY_SHA256);
        let signature = acs3_signature(&canonical, self.secret.expose());
        let authorization = format!(
            "ACS3-HMAC-SHA256 Credential={},SignedHeaders={signed_headers},Signature={signature}",
            self.access_key_id
        );
        // reqwest sets `Host` itself, from the same URL.
        headers.remove("host");
        let mut list: Vec<(String, String)> = headers.into_iter().collect();
        list.push(("authorization".to_owned(), authorization));
        (url, list)
    }

    async fn attempt(&self, out: &Outgoing) -> Result<Accepted, Failure> {
        let params = self.params(out)?;
        let now = time::OffsetDateTime::from(self.clock.wall());
        let timestamp = now
            .format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .map_err(|e| ChannelError::transient(format!("cannot format the time: {e}")))?;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let request = match self.signature {
            SignatureScheme::V1 => self
                .http
                .post(self.endpoint.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(self.v1_body(params, &timestamp, &nonce)),
            SignatureScheme::Acs3 => {
                let (url, headers) = self.acs3_request(&params, &timestamp, &nonce);
                let mut request = self.http.post(url);
                for (k, v) in headers {
                    request = request.header(k, v);
                }
                request
            }
        };
        let response = request.send().await.map_err(request_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        let body = read_body(response).await?;
        self.interpret(status, &body)
            .map_err(|f| f.honour_retry_after(retry_after))
    }

    fn interpret(&self, status: u16, body: &[u8]) -> Result<Accepted, Failure> {
        let reply: Option<Reply> = serde_json::from_slice(body).ok();
        let code = reply.as_ref().and_then(|r| r.code.as_deref());
        if code == Some("OK") {
            let provider_id = reply
                .as_ref()
                .and_then(|r| r.biz_id.clone())
                .filter(|id| !id.is_empty());
            return Ok(Accepted::Sent { provider_id });
        }
        let message = match reply.as_ref().and_then(|r| r.message.as_deref()) {
            Some(m) => format!("Aliyun: {}", vendor_text(m, &[&self.access_key_id])),
            None if code.is_some() => "Aliyun: (no message)".to_owned(),
            None => format!("Aliyun answered HTTP {status} without an error code"),
        };
        Err(classify(status, code).error(code, message))
    }
}

#[async_trait]
impl Channel for AliyunSms {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        let result = self.attempt(out).await;
        self.health.observe(result)
    }

    fn health(&self) -> Health {
        self.health.health()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reply {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    biz_id: Option<String>,
}

/// `PhoneNumbers` for an E.164 number: mainland numbers (`+86…`) as the plain 11-digit
/// number, every other one as country code and number without the `+` (Aliyun's
/// documented formats for domestic and international/HK/Macau/Taiwan messages).
fn phone_numbers(e164: &str) -> String {
    let digits = e164.trim_start_matches('+');
    digits.strip_prefix("86").unwrap_or(digits).to_owned()
}

/// `TemplateParam`: a JSON object of strings, from the mapping or (without one) from every
/// string or number field of the data. `None` when there is nothing to pass.
fn template_param(
    template: &Template,
    name: &str,
    data: Option<&serde_json::Value>,
) -> Result<Option<String>, ChannelError> {
    let mut values = BTreeMap::new();
    match &template.params {
        Some(mapping) => {
            for (vendor, key) in mapping {
                values.insert(vendor.as_str(), data_value(data, key, name)?);
            }
        }
        None => {
            if let Some(serde_json::Value::Object(fields)) = data {
                for (key, value) in fields {
                    if value.is_string() || value.is_number() {
                        if let Some(text) = scalar(value) {
                            values.insert(key.as_str(), text);
                        }
                    }
                }
            }
        }
    }
    if values.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&values)
        .map(Some)
        .map_err(|e| ChannelError::permanent(format!("cannot encode TemplateParam: {e}")))
}

// ---------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------

/// Aliyun's reply → what the dispatcher does. `code` is the reply's `Code` (`None` when the
/// body has none, e.g. an HTML error page); `"OK"` never reaches here.
///
/// | code | outcome |
/// |---|---|
/// | `isp.SYSTEM_ERROR`, `isp.GATEWAY_ERROR`, `SignatureNonceUsed` | transient |
/// | `isv.BUSINESS_LIMIT_CONTROL*` (per-number flow control), `isv.DAY_LIMIT_CONTROL` | rate_limited, retry after 1 h |
/// | `isv.MONTH_LIMIT_CONTROL` | rate_limited, retry after 24 h |
/// | `Throttling*` (API call rate) | rate_limited, dispatcher backoff |
/// | `isv.MOBILE_NUMBER_ILLEGAL` | bad_recipient |
/// | template/signature/parameter/content refusals (see the table) | permanent |
/// | `isv.AMOUNT_NOT_ENOUGH`, `isv.OUT_OF_SERVICE`, account, product, RAM, IP and credential errors | config, instance down |
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
        "isp.SYSTEM_ERROR" | "isp.GATEWAY_ERROR" | "SignatureNonceUsed" => Verdict::of(Transient),
        c if c.starts_with("isv.BUSINESS_LIMIT_CONTROL") => {
            Verdict::of(RateLimited).after(FLOW_CONTROL_RETRY_SECS)
        }
        "isv.DAY_LIMIT_CONTROL" => Verdict::of(RateLimited).after(FLOW_CONTROL_RETRY_SECS),
        "isv.MONTH_LIMIT_CONTROL" => Verdict::of(RateLimited).after(MONTH_LIMIT_RETRY_SECS),
        c if c.starts_with("Throttling") => Verdict::of(RateLimited),
        "isv.MOBILE_NUMBER_ILLEGAL" => Verdict::of(BadRecipient),
        "isv.SMS_TEMPLATE_ILLEGAL"
        | "isv.SMS_SIGNATURE_ILLEGAL"
        | "isv.TEMPLATE_MISSING_PARAMETERS"
        | "isv.INVALID_JSON_PARAM"
        | "isv.INVALID_PARAMETERS"
        | "isv.MOBILE_COUNT_OVER_LIMIT"
        | "isv.PARAM_LENGTH_LIMIT"
        | "isv.PARAM_NOT_SUPPORT_URL"
        | "isv.BLACK_KEY_CONTROL_LIMIT"
        | "isv.SMS_CONTENT_ILLEGAL"
        | "isv.SMS_SIGNATURE_SCENE_ILLEGAL"
        | "isv.SMS_SIGN_ILLEGAL"
        | "isv.SIGN_STATE_ILLEGAL"
        | "isv.DOMESTIC_NUMBER_NOT_SUPPORTED"
        | "isv.EXTEND_CODE_ERROR" => Verdict::of(Permanent),
        "isv.AMOUNT_NOT_ENOUGH"
        | "isv.OUT_OF_SERVICE"
        | "isv.ACCOUNT_NOT_EXISTS"
        | "isv.ACCOUNT_ABNORMAL"
        | "isv.PRODUCT_UN_SUBSCRIPT"
        | "isv.PRODUCT_UNSUBSCRIBE"
        | "isp.RAM_PERMISSION_DENY"
        | "isv.DENY_IP_RANGE"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "InvalidTimeStamp.Expired" => Verdict::of(Config).down(),
        c if c.starts_with("InvalidAccessKeyId") => Verdict::of(Config).down(),
        _ => Verdict::of(Transient),
    }
}

// ---------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------

/// `s` percent-encoded for POP signatures ([`POP_ENCODE`]).
pub(crate) fn pop_encode(s: &str) -> String {
    utf8_percent_encode(s, POP_ENCODE).to_string()
}

/// Parameters sorted by name, names and values [`pop_encode`]d, joined as `k=v&k=v`.
pub(crate) fn canonicalized_query(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", pop_encode(k), pop_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// RPC v1: base64(HMAC-SHA1(secret + "&", METHOD + "&%2F&" + encode(canonicalized))).
/// `params` must not contain `Signature`.
pub(crate) fn rpc_v1_signature(
    method: &str,
    params: &BTreeMap<String, String>,
    secret: &str,
) -> String {
    let string_to_sign = format!(
        "{method}&{}&{}",
        pop_encode("/"),
        pop_encode(&canonicalized_query(params))
    );
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// ACS3 canonical request and its signed-header list. `headers` are lowercase names →
/// values (every one is signed); `query` is already canonicalized.
pub(crate) fn acs3_canonical_request(
    method: &str,
    uri: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    hashed_payload: &str,
) -> (String, String) {
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed_headers = headers.keys().cloned().collect::<Vec<_>>().join(";");
    (
        format!(
            "{method}\n{uri}\n{query}\n{canonical_headers}\n{signed_headers}\n{hashed_payload}"
        ),
        signed_headers,
    )
}

/// ACS3: hex(HMAC-SHA256(secret, "ACS3-HMAC-SHA256\n" + hex(SHA-256(canonical request)))).
pub(crate) fn acs3_signature(canonical_request: &str, secret: &str) -> String {
    let string_to_sign = format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_channel::testkit::{message, outgoing};
    use herald_channel::Services;
    use std::time::Duration;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Gold vector 1 (providers.md): RPC v1, GET DescribeRegions.
    #[test]
    fn rpc_v1_vector_describe_regions() {
        let params = map(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]);
        assert_eq!(
            rpc_v1_signature("GET", &params, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    /// Gold vector 2 (providers.md): RPC v1, the SMS documentation's SendSms example.
    #[test]
    fn rpc_v1_vector_send_sms() {
        let params = map(&[
            ("AccessKeyId", "testId"),
            ("Action", "SendSms"),
            ("Format", "XML"),
            ("OutId", "123"),
            ("PhoneNumbers", "15300000001"),
            ("RegionId", "cn-hangzhou"),
            ("SignName", "阿里云短信测试专用"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "45e25e9b-0a6f-4070-8c85-2956eda1b466"),
            ("SignatureVersion", "1.0"),
            ("TemplateCode", "SMS_71390007"),
            ("TemplateParam", r#"{"customer":"test"}"#),
            ("Timestamp", "2017-07-12T02:42:19Z"),
            ("Version", "2017-05-25"),
        ]);
        assert_eq!(
            rpc_v1_signature("GET", &params, "testSecret"),
            "zJDF+Lrzhj/ThnlvIToysFRq6t4="
        );
    }

    /// Gold vector 3 (providers.md): ACS3-HMAC-SHA256, POST RunInstances.
    #[test]
    fn acs3_vector_run_instances() {
        let query = canonicalized_query(&map(&[
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]));
        assert_eq!(
            query,
            "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai"
        );
        let headers = map(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", EMPTY_SHA256),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]);
        assert_eq!(hex::encode(Sha256::digest(b"")), EMPTY_SHA256);
        let (canonical, signed) =
            acs3_canonical_request("POST", "/", &query, &headers, EMPTY_SHA256);
        assert_eq!(
            signed,
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
        assert_eq!(
            acs3_signature(&canonical, "YourAccessKeySecret"),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn pop_encoding() {
        assert_eq!(
            pop_encode("a b*c~d-e_f.g/h+i=j&"),
            "a%20b%2Ac~d-e_f.g%2Fh%2Bi%3Dj%26"
        );
        assert_eq!(pop_encode("短"), "%E7%9F%AD");
    }

    #[test]
    fn classification_table() {
        use ErrorKind::*;
        const HOUR: Option<Duration> = Some(Duration::from_secs(3600));
        const DAY: Option<Duration> = Some(Duration::from_secs(86400));
        /// (HTTP status, code, kind, retry_after, down)
        type Row = (u16, Option<&'static str>, ErrorKind, Option<Duration>, bool);
        let table: &[Row] = &[
            // providers.md
            (200, Some("isp.SYSTEM_ERROR"), Transient, None, false),
            (200, Some("isp.GATEWAY_ERROR"), Transient, None, false),
            (
                200,
                Some("isv.BUSINESS_LIMIT_CONTROL"),
                RateLimited,
                HOUR,
                false,
            ),
            (
                200,
                Some("isv.BUSINESS_LIMIT_CONTROL_MINUTE"),
                RateLimited,
                HOUR,
                false,
            ),
            (
                200,
                Some("isv.MOBILE_NUMBER_ILLEGAL"),
                BadRecipient,
                None,
                false,
            ),
            (
                200,
                Some("isv.SMS_TEMPLATE_ILLEGAL"),
                Permanent,
                None,
                false,
            ),
            (
                200,
                Some("isv.SMS_SIGNATURE_ILLEGAL"),
                Permanent,
                None,
                false,
            ),
            (
                200,
                Some("isv.TEMPLATE_MISSING_PARAMETERS"),
                Permanent,
                None,
                false,
            ),
            (200, Some("isv.INVALID_JSON_PARAM"), Permanent, None, false),
            (200, Some("isv.AMOUNT_NOT_ENOUGH"), Config, None, true),
            (200, Some("isv.OUT_OF_SERVICE"), Config, None, true),
            // Aliyun's error-code page
            (200, Some("isv.DAY_LIMIT_CONTROL"), RateLimited, HOUR, false),
            (
                200,
                Some("isv.MONTH_LIMIT_CONTROL"),
                RateLimited,
                DAY,
                false,
            ),
            (200, Some("isv.INVALID_PARAMETERS"), Permanent, None, false),
            (
                200,
                Some("isv.MOBILE_COUNT_OVER_LIMIT"),
                Permanent,
                None,
                false,
            ),
            (200, Some("isv.PARAM_LENGTH_LIMIT"), Permanent, None, false),
            (
                200,
                Some("isv.PARAM_NOT_SUPPORT_URL"),
                Permanent,
                None,
                false,
            ),
            (
                200,
                Some("isv.BLACK_KEY_CONTROL_LIMIT"),
                Permanent,
                None,
                false,
            ),
            (200, Some("isv.SMS_CONTENT_ILLEGAL"), Permanent, None, false),
            (
                200,
                Some("isv.SMS_SIGNATURE_SCENE_ILLEGAL"),
                Permanent,
                None,
                false,
            ),
            (200, Some("isv.SMS_SIGN_ILLEGAL"), Permanent, None, false),
            (200, Some("isv.SIGN_STATE_ILLEGAL"), Permanent, None, false),
            (
                200,
                Some("isv.DOMESTIC_NUMBER_NOT_SUPPORTED"),
                Permanent,
                None,
                false,
            ),
            (200, Some("isv.EXTEND_CODE_ERROR"), Permanent, None, false),
            (200, Some("isv.ACCOUNT_NOT_EXISTS"), Config, None, true),
            (200, Some("isv.ACCOUNT_ABNORMAL"), Config, None, true),
            (200, Some("isv.PRODUCT_UN_SUBSCRIPT"), Config, None, true),
            (200, Some("isv.PRODUCT_UNSUBSCRIBE"), Config, None, true),
            (403, Some("isp.RAM_PERMISSION_DENY"), Config, None, true),
            (200, Some("isv.DENY_IP_RANGE"), Config, None, true),
            // POP gateway (signature, credentials, throttling)
            (400, Some("SignatureDoesNotMatch"), Config, None, true),
            (400, Some("IncompleteSignature"), Config, None, true),
            (400, Some("InvalidTimeStamp.Expired"), Config, None, true),
            (404, Some("InvalidAccessKeyId.NotFound"), Config, None, true),
            (400, Some("InvalidAccessKeyId.Inactive"), Config, None, true),
            (400, Some("SignatureNonceUsed"), Transient, None, false),
            (400, Some("Throttling.User"), RateLimited, None, false),
            (503, Some("Throttling"), RateLimited, None, false),
            // unknown codes: transient
            (200, Some("isv.SOMETHING_NEW"), Transient, None, false),
            (500, Some("InternalError"), Transient, None, false),
            // no code at all
            (429, None, RateLimited, None, false),
            (401, None, Config, None, false),
            (403, None, Config, None, false),
            (404, None, Config, None, false),
            (405, None, Config, None, false),
            (400, None, Permanent, None, false),
            (413, None, Permanent, None, false),
            (500, None, Transient, None, false),
            (502, None, Transient, None, false),
            (503, None, Transient, None, false),
            (200, None, Transient, None, false),
            (302, None, Transient, None, false),
        ];
        for &(status, code, kind, retry_after, down) in table {
            let v = classify(status, code);
            assert_eq!(
                (v.kind, v.retry_after, v.down),
                (kind, retry_after, down),
                "{status} {code:?}"
            );
        }
    }

    fn channel(config: serde_json::Value) -> Result<AliyunSms, ConfigError> {
        let services = Services::default();
        let ctx = BuildContext {
            name: "sms",
            config: &config,
            services: &services,
        };
        AliyunSms::new("sms", parse(&ctx)?)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "access_key_id": "LTAI5tExampleKey",
            "access_key_secret": "s3cr3t-value",
            "sign_name": "阿里云短信测试",
            "templates": {
                "report_ready": {
                    "template_code": "SMS_71390007",
                    "params": {"customer": "patient_name", "report": "report_id"}
                },
                "plain": {"template_code": "SMS_1", "sign_name": "Other"}
            }
        })
    }

    #[test]
    fn defaults_and_debug_redaction() {
        let ch = channel(base()).unwrap();
        assert_eq!(ch.endpoint.as_str(), "https://dysmsapi.aliyuncs.com/");
        assert_eq!(ch.signature, SignatureScheme::V1);
        assert_eq!(ch.region, "cn-hangzhou");
        let dbg = format!("{ch:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        let mut cfg = base();
        cfg["signature"] = "acs3".into();
        cfg["timeout"] = "3s".into();
        assert_eq!(channel(cfg).unwrap().signature, SignatureScheme::Acs3);
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "typo",
                serde_json::json!({"sign_nam": "x"}),
                "unknown field `sign_nam`",
            ),
            (
                "scheme",
                serde_json::json!({"signature": "v2"}),
                "signature: unknown variant `v2`",
            ),
            (
                "timeout",
                serde_json::json!({"timeout": "soon"}),
                "timeout:",
            ),
            (
                "endpoint",
                serde_json::json!({"endpoint": "ftp://x"}),
                "endpoint:",
            ),
            (
                "sign",
                serde_json::json!({"sign_name": " "}),
                "sign_name: must not be empty",
            ),
            ("none", serde_json::json!({"templates": {}}), "templates:"),
            (
                "code",
                serde_json::json!({"templates": {"t": {"template_code": ""}}}),
                "templates.t.template_code: must not be empty",
            ),
            (
                "nested typo",
                serde_json::json!({"templates": {"t": {"template_code": "S", "param": {}}}}),
                "unknown field `param`",
            ),
            (
                "secret type",
                serde_json::json!({"access_key_secret": 123456}),
                "access_key_secret: invalid type",
            ),
        ];
        for (what, patch, expected) in cases {
            let mut cfg = base();
            for (k, v) in patch.as_object().unwrap() {
                cfg[k] = v.clone();
            }
            let err = channel(cfg).unwrap_err().to_string();
            assert!(err.starts_with("channels.sms: "), "{what}: {err}");
            assert!(err.contains(expected), "{what}: {err}");
            assert!(
                !err.contains("123456") && !err.contains("s3cr3t"),
                "{what}: {err}"
            );
        }
        let mut cfg = base();
        cfg.as_object_mut().unwrap().remove("access_key_id");
        let err = channel(cfg).unwrap_err().to_string();
        assert!(err.contains("missing field `access_key_id`"), "{err}");
    }

    #[test]
    fn request_parameters() {
        let ch = channel(base()).unwrap();
        let mut m = (*message("Report", "ready")).clone();
        m.template = Some("report_ready".into());
        m.data = Some(serde_json::json!({"patient_name": "张三", "report_id": 42, "x": 1}));
        let mut out = outgoing(Arc::new(m), "u1", Some("+8613800000000"));
        out.delivery_id = 77;
        let params = ch.params(&out).unwrap();
        assert_eq!(
            params,
            map(&[
                ("OutId", "77"),
                ("PhoneNumbers", "13800000000"),
                ("SignName", "阿里云短信测试"),
                ("TemplateCode", "SMS_71390007"),
                ("TemplateParam", r#"{"customer":"张三","report":"42"}"#),
            ])
        );

        // Without a mapping: every string/number field, under its own name.
        let mut m = (*message("t", "c")).clone();
        m.template = Some("plain".into());
        m.data = Some(serde_json::json!({"code": "1234", "n": 5, "flag": true, "o": {"a": 1}}));
        let out = outgoing(Arc::new(m), "u1", Some("+85212345678"));
        let params = ch.params(&out).unwrap();
        assert_eq!(params["PhoneNumbers"], "85212345678");
        assert_eq!(params["SignName"], "Other");
        assert_eq!(params["TemplateParam"], r#"{"code":"1234","n":"5"}"#);

        // No data and no mapping: no TemplateParam.
        let mut m = (*message("t", "c")).clone();
        m.template = Some("plain".into());
        let params = ch
            .params(&outgoing(Arc::new(m), "u1", Some("+8613800000000")))
            .unwrap();
        assert!(!params.contains_key("TemplateParam"));

        // A mapped key missing from the data.
        let mut m = (*message("t", "c")).clone();
        m.template = Some("report_ready".into());
        m.data = Some(serde_json::json!({"patient_name": "x"}));
        let err = ch
            .params(&outgoing(Arc::new(m), "u1", Some("+8613800000000")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.message().contains("report_id"), "{err}");

        // Unmapped template, no template.
        let mut m = (*message("t", "c")).clone();
        m.template = Some("other".into());
        let err = ch
            .params(&outgoing(Arc::new(m), "u1", Some("+8613800000000")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("`other`"), "{err}");
        let err = ch
            .params(&outgoing(message("t", "c"), "u1", Some("+8613800000000")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn v1_body_is_signed_form() {
        let ch = channel(base()).unwrap();
        let params = map(&[("OutId", "1"), ("PhoneNumbers", "13800000000")]);
        let body = ch.v1_body(params, "2026-01-01T00:00:00Z", "nonce-1");
        let (unsigned, signature) = body.rsplit_once("&Signature=").unwrap();
        assert_eq!(
            unsigned,
            "AccessKeyId=LTAI5tExampleKey&Action=SendSms&Format=JSON&OutId=1\
             &PhoneNumbers=13800000000&RegionId=cn-hangzhou&SignatureMethod=HMAC-SHA1\
             &SignatureNonce=nonce-1&SignatureVersion=1.0&Timestamp=2026-01-01T00%3A00%3A00Z\
             &Version=2017-05-25"
        );
        let parsed: BTreeMap<String, String> = form_urlencoded::parse(unsigned.as_bytes())
            .into_owned()
            .collect();
        let expected = rpc_v1_signature("POST", &parsed, "s3cr3t-value");
        assert_eq!(signature, pop_encode(&expected));
    }

    #[test]
    fn replies() {
        let ch = channel(base()).unwrap();
        let ok =
            br#"{"Message":"OK","RequestId":"F655A8D5","Code":"OK","BizId":"9006197469364984400"}"#;
        assert_eq!(
            ch.interpret(200, ok).unwrap(),
            Accepted::Sent {
                provider_id: Some("9006197469364984400".into())
            }
        );
        let limited = r#"{"Message":"触发小时级流控Permits:5 for 13800000000","RequestId":"x","Code":"isv.BUSINESS_LIMIT_CONTROL"}"#;
        let f = ch.interpret(200, limited.as_bytes()).unwrap_err();
        assert_eq!(f.error.kind(), ErrorKind::RateLimited);
        assert_eq!(f.error.code(), Some("isv.BUSINESS_LIMIT_CONTROL"));
        assert!(!f.error.message().contains("13800000000"), "{}", f.error);
        let html = ch.interpret(502, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(html.error.kind(), ErrorKind::Transient);
        assert_eq!(html.error.code(), None);
        assert!(html.error.message().contains("502"), "{}", html.error);
    }
}
