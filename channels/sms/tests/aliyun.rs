//! `sms.aliyun` end to end, built through its descriptor, against a local dysmsapi
//! (`herald_channel_sms::testing::aliyun`) that recomputes RPC v1 and ACS3 signatures from the received request as Aliyun does and
//! answers with Aliyun's documented replies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::{Accepted, AddressKind, Channel, ErrorKind, Health};
use herald_channel_sms::testing::aliyun::*;
use herald_channel_sms::testing::*;
use serde_json::json;

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
