//! `sms.aliyun` end to end, built through its descriptor, against a local dysmsapi that
//! recomputes RPC v1 and ACS3 signatures from the received request as Aliyun does and
//! answers with Aliyun's documented replies.

mod common;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use herald_channel::{Accepted, AddressKind, Channel, ErrorKind, Health};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;
use sha2::{Digest, Sha256};

// Link the crate so its descriptors register.
use herald_channel_sms as _;

const KEY_ID: &str = "LTAI5tHeraldTestKey";
const SECRET: &str = "aliyun-test-secret";
const PHONE: &str = "+8613800000000";
const BIZ_ID: &str = "900619746936498440^0";

// ---------------------------------------------------------------------------------------
// The fake dysmsapi
// ---------------------------------------------------------------------------------------

/// RFC 3986 unreserved characters stay, as Aliyun's POP gateway encodes.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

fn canonical(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn gateway_error(status: u16, code: &str, message: &str) -> Answer {
    Answer::json(
        status,
        json!({
            "RequestId": "8E8A6BB4-6B5C-4B49-9C41-8F1C1F2F7A11",
            "HostId": "dysmsapi.aliyuncs.com",
            "Code": code,
            "Message": message,
            "Recommend": "https://api.aliyun.com/troubleshoot?q=".to_owned() + code,
        }),
    )
}

fn business(code: &str, message: &str) -> Answer {
    Answer::json(
        200,
        json!({"Code": code, "Message": message, "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990"}),
    )
}

#[derive(Default)]
struct Dysmsapi {
    nonces: Mutex<HashSet<String>>,
    script: Mutex<VecDeque<Answer>>,
    /// The `SendSms` parameters of every accepted (signature-checked) request.
    accepted: Mutex<Vec<BTreeMap<String, String>>>,
}

impl Dysmsapi {
    fn then(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    fn accepted(&self) -> Vec<BTreeMap<String, String>> {
        self.accepted.lock().unwrap().clone()
    }

    fn fresh(stamp: &str) -> bool {
        let now = time::OffsetDateTime::now_utc();
        let skew = time::Duration::minutes(15);
        (iso_utc(now - skew).as_str()..=iso_utc(now + skew).as_str()).contains(&stamp)
    }

    /// RPC v1: every parameter in the form body (and query), `Signature` over
    /// `POST&%2F&<canonicalized>` with `secret&`.
    fn check_v1(&self, req: &Recorded) -> Result<(BTreeMap<String, String>, String), Answer> {
        let mut params = req.query_pairs();
        params.extend(req.form());
        let Some(signature) = params.remove("Signature") else {
            return Err(gateway_error(
                400,
                "IncompleteSignature",
                "The request signature does not conform to Aliyun standards.",
            ));
        };
        if params.get("SignatureMethod").map(String::as_str) != Some("HMAC-SHA1")
            || params.get("SignatureVersion").map(String::as_str) != Some("1.0")
        {
            return Err(gateway_error(
                400,
                "InvalidSignatureMethod",
                "Specified signature method is not valid.",
            ));
        }
        if params.get("AccessKeyId").map(String::as_str) != Some(KEY_ID) {
            return Err(gateway_error(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            ));
        }
        if !params.get("Timestamp").is_some_and(|t| Self::fresh(t)) {
            return Err(gateway_error(
                400,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            ));
        }
        let string_to_sign = format!("{}&{}&{}", req.method, enc("/"), enc(&canonical(&params)));
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{SECRET}&").as_bytes()).unwrap();
        mac.update(string_to_sign.as_bytes());
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        if signature != expected {
            // Aliyun echoes its string to sign, key id and phone number included.
            return Err(gateway_error(
                400,
                "SignatureDoesNotMatch",
                &format!("Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"),
            ));
        }
        let nonce = params.get("SignatureNonce").cloned().unwrap_or_default();
        Ok((params, nonce))
    }

    /// ACS3: `Authorization: ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…`
    /// over the canonical request rebuilt from what arrived.
    fn check_acs3(
        &self,
        req: &Recorded,
        auth: &str,
    ) -> Result<(BTreeMap<String, String>, String), Answer> {
        let fields: BTreeMap<&str, &str> = auth
            .trim_start_matches("ACS3-HMAC-SHA256")
            .trim()
            .split(',')
            .filter_map(|kv| kv.trim().split_once('='))
            .collect();
        let (Some(credential), Some(signed), Some(signature)) = (
            fields.get("Credential"),
            fields.get("SignedHeaders"),
            fields.get("Signature"),
        ) else {
            return Err(gateway_error(
                400,
                "IncompleteSignature",
                "The request signature does not conform to Aliyun standards.",
            ));
        };
        if *credential != KEY_ID {
            return Err(gateway_error(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            ));
        }
        let hashed = hex::encode(Sha256::digest(&req.body));
        if req.header("x-acs-content-sha256") != Some(hashed.as_str()) {
            return Err(gateway_error(
                400,
                "IncompleteSignature",
                "x-acs-content-sha256 does not match the body.",
            ));
        }
        if req.header("x-acs-action") != Some("SendSms")
            || req.header("x-acs-version") != Some("2017-05-25")
        {
            return Err(gateway_error(
                400,
                "InvalidAction.NotFound",
                "Specified api is not found.",
            ));
        }
        if !req.header("x-acs-date").is_some_and(Self::fresh) {
            return Err(gateway_error(
                400,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            ));
        }
        let signed_names: Vec<&str> = signed.split(';').collect();
        for needed in [
            "host",
            "x-acs-action",
            "x-acs-content-sha256",
            "x-acs-date",
            "x-acs-signature-nonce",
            "x-acs-version",
        ] {
            if !signed_names.contains(&needed) {
                return Err(gateway_error(
                    400,
                    "IncompleteSignature",
                    &format!("{needed} is not signed."),
                ));
            }
        }
        let mut headers = String::new();
        for name in &signed_names {
            headers.push_str(&format!(
                "{name}:{}\n",
                req.header(name).unwrap_or("").trim()
            ));
        }
        let params = req.query_pairs();
        let canonical_request = format!(
            "{}\n{}\n{}\n{headers}\n{signed}\n{hashed}",
            req.method,
            req.path,
            canonical(&params)
        );
        let string_to_sign = format!(
            "ACS3-HMAC-SHA256\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(string_to_sign.as_bytes());
        if hex::encode(mac.finalize().into_bytes()) != *signature {
            return Err(gateway_error(
                400,
                "SignatureDoesNotMatch",
                &format!("Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"),
            ));
        }
        let nonce = req.header("x-acs-signature-nonce").unwrap_or("").to_owned();
        Ok((params, nonce))
    }
}

impl Vendor for Dysmsapi {
    fn answer(&self, req: &Recorded) -> Answer {
        let checked = match req.header("authorization") {
            Some(auth) if auth.starts_with("ACS3-HMAC-SHA256 ") => self.check_acs3(req, auth),
            _ => self.check_v1(req),
        };
        let (mut params, nonce) = match checked {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        if nonce.is_empty() || !self.nonces.lock().unwrap().insert(nonce) {
            return gateway_error(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            );
        }
        if params.get("Action").is_some_and(|a| a != "SendSms") {
            return gateway_error(400, "InvalidAction.NotFound", "Specified api is not found.");
        }
        for required in ["PhoneNumbers", "SignName", "TemplateCode"] {
            if !params.contains_key(required) {
                return gateway_error(
                    400,
                    &format!("Missing{required}"),
                    &format!("{required} is mandatory for this action."),
                );
            }
        }
        if let Some(p) = params.get("TemplateParam") {
            if !serde_json::from_str::<serde_json::Value>(p).is_ok_and(|v| v.is_object()) {
                return business("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值");
            }
        }
        for common in [
            "AccessKeyId",
            "Action",
            "Format",
            "RegionId",
            "SignatureMethod",
            "SignatureNonce",
            "SignatureVersion",
            "Timestamp",
            "Version",
        ] {
            params.remove(common);
        }
        self.accepted.lock().unwrap().push(params);
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| {
            Answer::json(
                200,
                json!({"Code": "OK", "Message": "OK", "BizId": BIZ_ID, "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990"}),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn config(server: &Server, signature: &str, secret: &str) -> serde_json::Value {
    json!({
        "access_key_id": KEY_ID,
        "access_key_secret": secret,
        "sign_name": "阿里云短信测试",
        "endpoint": server.url(),
        "signature": signature,
        "timeout": "5s",
        "templates": {
            "report_ready": {
                "template_code": "SMS_71390007",
                "params": {"customer": "patient_name", "report": "report_id"}
            },
            "otp": {"template_code": "SMS_0000001", "sign_name": "Herald"}
        }
    })
}

async fn setup(signature: &str) -> (Arc<Dysmsapi>, Server, Arc<dyn Channel>) {
    let vendor = Arc::new(Dysmsapi::default());
    let server = Server::start(vendor.clone()).await;
    let channel =
        build("sms.aliyun", "sms", config(&server, signature, SECRET)).expect("valid config");
    (vendor, server, channel)
}

fn report(delivery_id: i64) -> herald_channel::Outgoing {
    templated(
        "report_ready",
        json!({"patient_name": "张三", "report_id": "R-2024-0042", "ignored": 1}),
        PHONE,
        delivery_id,
    )
}

#[test]
fn all_three_kinds_are_registered() {
    for kind in ["sms.aliyun", "sms.tencent", "sms.twilio"] {
        let d = herald_channel::find(kind).expect("registered");
        assert_eq!(d.family(), "sms");
        assert_eq!(d.address, AddressKind::Phone);
        assert!(!d.presence);
        assert!(!d.summary.is_empty());
    }
}

#[tokio::test]
async fn v1_posts_a_signed_form_and_returns_the_biz_id() {
    let (vendor, server, ch) = setup("v1").await;
    let sent = ch.send(&report(41)).await.expect("accepted");
    assert_eq!(
        sent,
        Accepted::Sent {
            provider_id: Some(BIZ_ID.into())
        }
    );

    let req = server.only_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/");
    assert_eq!(req.query, "", "nothing in the URL");
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = req.form();
    assert_eq!(form["Action"], "SendSms");
    assert_eq!(form["Version"], "2017-05-25");
    assert_eq!(form["Format"], "JSON");
    assert_eq!(form["RegionId"], "cn-hangzhou");
    assert_eq!(
        vendor.accepted(),
        [BTreeMap::from([
            ("OutId".to_owned(), "41".to_owned()),
            ("PhoneNumbers".to_owned(), "13800000000".to_owned()),
            ("SignName".to_owned(), "阿里云短信测试".to_owned()),
            ("TemplateCode".to_owned(), "SMS_71390007".to_owned()),
            (
                "TemplateParam".to_owned(),
                r#"{"customer":"张三","report":"R-2024-0042"}"#.to_owned()
            ),
        ])]
    );

    // A second send signs with a fresh nonce (the server refuses a reused one).
    let sent = ch.send(&report(42)).await.expect("accepted");
    assert!(matches!(sent, Accepted::Sent { .. }));
    assert_eq!(ch.health(), Health::Ok);
}

#[tokio::test]
async fn acs3_posts_a_signed_query_and_returns_the_biz_id() {
    let (vendor, server, ch) = setup("acs3").await;
    let out = templated(
        "otp",
        json!({"code": "123456", "minutes": 5}),
        "+85212345678",
        7,
    );
    let sent = ch.send(&out).await.expect("accepted");
    assert_eq!(
        sent,
        Accepted::Sent {
            provider_id: Some(BIZ_ID.into())
        }
    );

    let req = server.only_request();
    assert_eq!(req.method, "POST");
    assert!(req.body.is_empty());
    assert!(req
        .header("authorization")
        .unwrap()
        .starts_with("ACS3-HMAC-SHA256 Credential=LTAI5tHeraldTestKey,SignedHeaders=host;"));
    assert_eq!(
        vendor.accepted(),
        [BTreeMap::from([
            ("OutId".to_owned(), "7".to_owned()),
            ("PhoneNumbers".to_owned(), "85212345678".to_owned()),
            ("SignName".to_owned(), "Herald".to_owned()),
            ("TemplateCode".to_owned(), "SMS_0000001".to_owned()),
            (
                "TemplateParam".to_owned(),
                r#"{"code":"123456","minutes":"5"}"#.to_owned()
            ),
        ])]
    );
    assert!(ch.send(&out).await.is_ok(), "fresh nonce on every request");
}

#[tokio::test]
async fn per_number_flow_control_is_rate_limited_for_an_hour() {
    let (vendor, _server, ch) = setup("v1").await;
    vendor.then(business(
        "isv.BUSINESS_LIMIT_CONTROL",
        "触发小时级流控Permits:5",
    ));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.code(), Some("isv.BUSINESS_LIMIT_CONTROL"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(
        ch.health(),
        Health::Ok,
        "flow control is no account problem"
    );
}

#[tokio::test]
async fn an_illegal_number_is_a_bad_recipient() {
    let (vendor, _server, ch) = setup("v1").await;
    vendor.then(business(
        "isv.MOBILE_NUMBER_ILLEGAL",
        "非法手机号 13800000000",
    ));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRecipient);
    assert_eq!(err.code(), Some("isv.MOBILE_NUMBER_ILLEGAL"));
    assert!(!err.to_string().contains("13800000000"), "{err}");
}

#[tokio::test]
async fn template_refusals_are_permanent_and_system_errors_transient() {
    let (vendor, _server, ch) = setup("acs3").await;
    vendor.then(business(
        "isv.SMS_TEMPLATE_ILLEGAL",
        "模板不合法(不存在或被拉黑)",
    ));
    vendor.then(business("isp.SYSTEM_ERROR", "isp.SYSTEM_ERROR"));
    vendor.then(business("isv.SOMETHING_NEW", "who knows"));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Permanent, Some("isv.SMS_TEMPLATE_ILLEGAL"))
    );
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Transient, Some("isp.SYSTEM_ERROR"))
    );
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Transient, Some("isv.SOMETHING_NEW")),
        "unknown code kept"
    );
}

#[tokio::test]
async fn a_tampered_secret_fails_the_signature_check_as_config() {
    for scheme in ["v1", "acs3"] {
        let vendor = Arc::new(Dysmsapi::default());
        let server = Server::start(vendor.clone()).await;
        let ch = build(
            "sms.aliyun",
            "sms",
            config(&server, scheme, "aliyun-test-secreT"),
        )
        .unwrap();
        let err = ch.send(&report(3)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{scheme}: {err}");
        assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{scheme}");
        let text = err.to_string();
        for leaked in ["13800000000", KEY_ID, "secreT", "string to sign"] {
            assert!(!text.contains(leaked), "{scheme}: {leaked} in {text}");
        }
        assert!(
            vendor.accepted().is_empty(),
            "{scheme}: refused before SendSms"
        );
        assert!(
            matches!(ch.health(), Health::Down(_)),
            "{scheme}: credentials rejected"
        );
    }
}

#[tokio::test]
async fn an_account_problem_takes_the_channel_down_until_a_send_succeeds() {
    let (vendor, _server, ch) = setup("v1").await;
    vendor.then(business("isv.AMOUNT_NOT_ENOUGH", "账户余额不足"));
    vendor.then(business("isp.SYSTEM_ERROR", "isp.SYSTEM_ERROR"));
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Config, Some("isv.AMOUNT_NOT_ENOUGH"))
    );
    let Health::Down(reason) = ch.health() else {
        panic!("expected Down, got {:?}", ch.health())
    };
    assert!(reason.contains("isv.AMOUNT_NOT_ENOUGH"), "{reason}");

    let err = ch.send(&report(2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(
        matches!(ch.health(), Health::Down(_)),
        "a failure does not clear it"
    );

    ch.send(&report(3)).await.expect("accepted again");
    assert_eq!(ch.health(), Health::Ok);

    vendor.then(business("isv.OUT_OF_SERVICE", "业务停机"));
    let err = ch.send(&report(4)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(matches!(ch.health(), Health::Down(_)));
}

#[tokio::test]
async fn an_unmapped_template_is_config_and_nothing_is_sent() {
    let (_vendor, server, ch) = setup("v1").await;
    let err = ch
        .send(&templated("invoice_due", json!({}), PHONE, 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("`invoice_due`"), "{err}");

    let plain = herald_channel::testkit::outgoing(
        herald_channel::testkit::message("t", "c"),
        "u",
        Some(PHONE),
    );
    assert_eq!(ch.send(&plain).await.unwrap_err().kind(), ErrorKind::Config);

    let missing = templated("report_ready", json!({"patient_name": "x"}), PHONE, 1);
    let err = ch.send(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.message().contains("report_id"), "{err}");
    assert!(server.requests().is_empty());
    assert_eq!(
        ch.health(),
        Health::Ok,
        "a message problem is no account problem"
    );
}

#[tokio::test]
async fn gateway_failures_and_unreachable_endpoints_are_transient() {
    struct Broken;
    impl Vendor for Broken {
        fn answer(&self, _: &Recorded) -> Answer {
            Answer {
                status: 502,
                headers: vec![],
                body: "<html>502 Bad Gateway</html>".into(),
            }
        }
    }
    let server = Server::start(Arc::new(Broken)).await;
    let ch = build("sms.aliyun", "sms", config(&server, "v1", SECRET)).unwrap();
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!((err.kind(), err.code()), (ErrorKind::Transient, None));
    assert!(err.message().contains("502"), "{err}");

    let mut cfg = config(&server, "v1", SECRET);
    cfg["endpoint"] = closed_port_url().await.into();
    let ch = build("sms.aliyun", "sms", cfg).unwrap();
    let err = ch.send(&report(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(
        !err.message().contains("127.0.0.1"),
        "no URL in errors: {err}"
    );
}

#[test]
fn config_errors_name_the_instance_and_key() {
    let err = build("sms.aliyun", "sms", json!({"access_key_id": "x"}))
        .err()
        .expect("invalid")
        .to_string();
    assert!(err.starts_with("channels.sms: "), "{err}");
    assert!(err.contains("access_key_secret"), "{err}");
}
