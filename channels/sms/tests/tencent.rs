//! `sms.tencent` end to end, built through its descriptor, against a local Tencent Cloud API
//! that checks the `X-TC-*` headers, recomputes the TC3-HMAC-SHA256 signature from the
//! received request as Tencent does and answers with Tencent's documented replies.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_channel::{Accepted, Channel, ErrorKind, Health};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

// Link the crate so its descriptors register.
use herald_channel_sms as _;

const SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
const SECRET_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
const APP_ID: &str = "1400006666";
const PHONE: &str = "+8613711112222";
const SERIAL: &str = "5000:1045710669157053657849499619";

// ---------------------------------------------------------------------------------------
// The fake sms.tencentcloudapi.com
// ---------------------------------------------------------------------------------------

fn error(code: &str, message: &str) -> Answer {
    Answer::json(
        200,
        json!({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "ed93f3cb-f35e-473f-b9f3-0d451b8b79c6"}}),
    )
}

/// A `SendStatusSet` answer for one number.
fn status(code: &str, message: &str, serial: &str) -> Answer {
    Answer::json(
        200,
        json!({"Response": {
            "SendStatusSet": [{
                "SerialNo": serial, "PhoneNumber": PHONE, "Fee": if code == "Ok" { 1 } else { 0 },
                "SessionContext": "", "Code": code, "Message": message, "IsoCode": "CN"
            }],
            "RequestId": "a0aabda6-cf91-4f3e-a81f-9198114a2279"
        }}),
    )
}

fn hmac256(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[derive(Default)]
struct TencentCloud {
    script: Mutex<VecDeque<Answer>>,
    accepted: Mutex<Vec<serde_json::Value>>,
}

impl TencentCloud {
    fn then(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    fn check(&self, req: &Recorded) -> Result<(), Answer> {
        if req.method != "POST" || req.path != "/" {
            return Err(error(
                "InvalidAction",
                "The requested action is not supported.",
            ));
        }
        if req.header("x-tc-action") != Some("SendSms") {
            return Err(error("InvalidAction", "Action SendSms is expected."));
        }
        if req.header("x-tc-version") != Some("2021-01-11") {
            return Err(error(
                "NoSuchVersion",
                "The requested version does not exist.",
            ));
        }
        if req.header("x-tc-region").is_none_or(str::is_empty) {
            return Err(error(
                "MissingParameter",
                "The request is missing the Region parameter.",
            ));
        }
        let Some(timestamp) = req
            .header("x-tc-timestamp")
            .and_then(|t| t.parse::<i64>().ok())
        else {
            return Err(error(
                "MissingParameter",
                "The request is missing the Timestamp parameter.",
            ));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if (now - timestamp).abs() > 300 {
            return Err(error("AuthFailure.SignatureExpire", "Signature expired."));
        }
        let auth = req.header("authorization").unwrap_or("");
        let Some(rest) = auth.strip_prefix("TC3-HMAC-SHA256 ") else {
            return Err(error(
                "AuthFailure.InvalidAuthorization",
                "Authorization is invalid.",
            ));
        };
        let fields: BTreeMap<&str, &str> = rest
            .split(", ")
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let (Some(credential), Some(signed), Some(signature)) = (
            fields.get("Credential"),
            fields.get("SignedHeaders"),
            fields.get("Signature"),
        ) else {
            return Err(error(
                "AuthFailure.InvalidAuthorization",
                "Authorization is invalid.",
            ));
        };
        let scope: Vec<&str> = credential.split('/').collect();
        let [id, date, service, "tc3_request"] = scope[..] else {
            return Err(error(
                "AuthFailure.InvalidAuthorization",
                "Credential is invalid.",
            ));
        };
        if id != SECRET_ID {
            return Err(error(
                "AuthFailure.SecretIdNotFound",
                "The SecretId is not found.",
            ));
        }
        let expected_date = time::OffsetDateTime::from_unix_timestamp(timestamp)
            .unwrap()
            .format(&time::macros::format_description!("[year]-[month]-[day]"))
            .unwrap();
        if date != expected_date || service != "sms" {
            return Err(error(
                "AuthFailure.SignatureFailure",
                "Credential scope does not match.",
            ));
        }
        let names: Vec<&str> = signed.split(';').collect();
        if !names.contains(&"content-type") || !names.contains(&"host") {
            return Err(error(
                "AuthFailure.SignatureFailure",
                "content-type and host must be signed.",
            ));
        }
        let mut canonical_headers = String::new();
        for name in &names {
            let value = req.header(name).unwrap_or("").trim().to_ascii_lowercase();
            canonical_headers.push_str(&format!("{name}:{value}\n"));
        }
        let canonical = format!(
            "POST\n/\n{}\n{canonical_headers}\n{signed}\n{}",
            req.query,
            hex::encode(Sha256::digest(&req.body))
        );
        let string_to_sign = format!(
            "TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let k_date = hmac256(format!("TC3{SECRET_KEY}").as_bytes(), date);
        let k_service = hmac256(&k_date, service);
        let k_signing = hmac256(&k_service, "tc3_request");
        if hex::encode(hmac256(&k_signing, &string_to_sign)) != *signature {
            return Err(error(
                "AuthFailure.SignatureFailure",
                "The provided credentials could not be validated. Please check your signature is correct.",
            ));
        }
        Ok(())
    }
}

impl Vendor for TencentCloud {
    fn answer(&self, req: &Recorded) -> Answer {
        if let Err(answer) = self.check(req) {
            return answer;
        }
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
            return error(
                "FailedOperation.JsonParseFail",
                "Failed to parse the request body.",
            );
        };
        if body["SmsSdkAppId"] != APP_ID {
            return error(
                "UnauthorizedOperation.SmsSdkAppIdVerifyFail",
                "SmsSdkAppId verification failed.",
            );
        }
        if body["PhoneNumberSet"]
            .as_array()
            .is_none_or(|s| s.is_empty())
        {
            return error(
                "MissingParameter.EmptyPhoneNumberSet",
                "The phone number set is empty.",
            );
        }
        self.accepted.lock().unwrap().push(body);
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| status("Ok", "send success", SERIAL))
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn config(server: &Server, secret_key: &str) -> serde_json::Value {
    json!({
        "secret_id": SECRET_ID,
        "secret_key": secret_key,
        "sms_sdk_app_id": APP_ID,
        "sign_name": "腾讯云",
        "region": "ap-guangzhou",
        "endpoint": server.url(),
        "timeout": "5s",
        "templates": {
            "report_ready": {"template_id": 1110, "params": ["patient_name", "report_id"]}
        }
    })
}

async fn setup() -> (Arc<TencentCloud>, Server, Arc<dyn Channel>) {
    let vendor = Arc::new(TencentCloud::default());
    let server = Server::start(vendor.clone()).await;
    let channel = build("sms.tencent", "tc", config(&server, SECRET_KEY)).expect("valid config");
    (vendor, server, channel)
}

fn report(delivery_id: i64) -> herald_channel::Outgoing {
    templated(
        "report_ready",
        json!({"patient_name": "张三", "report_id": 4370}),
        PHONE,
        delivery_id,
    )
}

#[tokio::test]
async fn sends_signed_json_and_returns_the_serial_no() {
    let (vendor, server, ch) = setup().await;
    let sent = ch.send(&report(88)).await.expect("accepted");
    assert_eq!(
        sent,
        Accepted::Sent {
            provider_id: Some(SERIAL.into())
        }
    );

    let req = server.only_request();
    assert_eq!(
        req.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(req.header("x-tc-action"), Some("SendSms"));
    assert_eq!(req.header("x-tc-version"), Some("2021-01-11"));
    assert_eq!(req.header("x-tc-region"), Some("ap-guangzhou"));
    assert!(req
        .header("authorization")
        .unwrap()
        .contains("/sms/tc3_request, SignedHeaders=content-type;host, Signature="));
    assert_eq!(
        vendor.accepted.lock().unwrap().clone(),
        [json!({
            "PhoneNumberSet": [PHONE],
            "SmsSdkAppId": APP_ID,
            "TemplateId": "1110",
            "SignName": "腾讯云",
            "TemplateParamSet": ["张三", "4370"],
            "SessionContext": "88",
        })]
    );
    assert_eq!(ch.health(), Health::Ok);
    assert_eq!(
        ch.defaults().rate_limit,
        Some((3000, Duration::from_secs(1))),
        "SendSms's documented rate"
    );
}

#[tokio::test]
async fn per_number_limits_are_rate_limited() {
    let (vendor, _server, ch) = setup().await;
    vendor.then(status(
        "LimitExceeded.PhoneNumberOneHourLimit",
        "单个手机号1小时内下发短信条数超过设定的上限",
        "",
    ));
    vendor.then(status(
        "LimitExceeded.PhoneNumberThirtySecondLimit",
        "30秒内下发短信条数超过上限",
        "",
    ));
    vendor.then(status(
        "LimitExceeded.DeliveryFrequencyLimit",
        "下发短信命中了频率限制策略",
        "",
    ));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.code(), Some("LimitExceeded.PhoneNumberOneHourLimit"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.retry_after()),
        (ErrorKind::RateLimited, Some(Duration::from_secs(60)))
    );
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.retry_after()),
        (ErrorKind::RateLimited, Some(Duration::from_secs(3600)))
    );
}

#[tokio::test]
async fn bad_numbers_are_bad_recipients() {
    let (vendor, _server, ch) = setup().await;
    vendor.then(status(
        "InvalidParameterValue.IncorrectPhoneNumber",
        "手机号格式错误 +8613711112222",
        "",
    ));
    vendor.then(error(
        "FailedOperation.PhoneNumberInBlacklist",
        "手机号在免打扰名单库中",
    ));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (
            ErrorKind::BadRecipient,
            Some("InvalidParameterValue.IncorrectPhoneNumber")
        )
    );
    assert!(!err.to_string().contains("13711112222"), "{err}");
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (
            ErrorKind::BadRecipient,
            Some("FailedOperation.PhoneNumberInBlacklist")
        )
    );
    assert_eq!(ch.health(), Health::Ok);
}

#[tokio::test]
async fn top_level_errors_are_classified_too() {
    let (vendor, _server, ch) = setup().await;
    vendor.then(error("RequestLimitExceeded", "请求的次数超过了频率限制。"));
    vendor.then(error("InternalError.Timeout", "请求下发短信超时"));
    vendor.then(status(
        "FailedOperation.TemplateIncorrectOrUnapproved",
        "模板未审批或内容不匹配",
        "",
    ));
    for (kind, code) in [
        (ErrorKind::Transient, "RequestLimitExceeded"),
        (ErrorKind::Transient, "InternalError.Timeout"),
        (
            ErrorKind::Permanent,
            "FailedOperation.TemplateIncorrectOrUnapproved",
        ),
    ] {
        let err = ch.send(&report(1)).await.unwrap_err();
        assert_eq!((err.kind(), err.code()), (kind, Some(code)));
    }
}

#[tokio::test]
async fn a_tampered_secret_fails_the_signature_check_as_config() {
    let vendor = Arc::new(TencentCloud::default());
    let server = Server::start(vendor.clone()).await;
    let ch = build(
        "sms.tencent",
        "tc",
        config(&server, "Gu5t9xGARNpq86cd98joQYCN3EXAMPLf"),
    )
    .unwrap();
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Config, Some("AuthFailure.SignatureFailure"))
    );
    assert!(!err.to_string().contains(SECRET_ID), "{err}");
    assert!(vendor.accepted.lock().unwrap().is_empty());
    assert!(matches!(ch.health(), Health::Down(_)));
}

#[tokio::test]
async fn insufficient_balance_takes_the_channel_down_until_a_send_succeeds() {
    let (vendor, _server, ch) = setup().await;
    vendor.then(error(
        "FailedOperation.InsufficientBalanceInSmsPackage",
        "套餐包余量不足",
    ));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (
            ErrorKind::Config,
            Some("FailedOperation.InsufficientBalanceInSmsPackage")
        )
    );
    let Health::Down(reason) = ch.health() else {
        panic!("expected Down, got {:?}", ch.health())
    };
    assert!(
        reason.contains("InsufficientBalanceInSmsPackage"),
        "{reason}"
    );

    vendor.then(error(
        "UnauthorizedOperation.SerivceSuspendDueToArrears",
        "欠费被停止服务",
    ));
    assert_eq!(
        ch.send(&report(2)).await.unwrap_err().kind(),
        ErrorKind::Config
    );
    assert!(matches!(ch.health(), Health::Down(_)));

    ch.send(&report(3)).await.expect("accepted again");
    assert_eq!(ch.health(), Health::Ok);
}

#[tokio::test]
async fn an_unmapped_template_is_config_and_nothing_is_sent() {
    let (_vendor, server, ch) = setup().await;
    let err = ch
        .send(&templated("welcome", json!({}), PHONE, 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("`welcome`"), "{err}");
    assert!(server.requests().is_empty());
}
