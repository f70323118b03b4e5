//! `sms.tencent` end to end, built through its descriptor, against a local Tencent Cloud API
//! (`herald_channel_sms::testing::tencent`) that checks the `X-TC-*` headers, recomputes the TC3-HMAC-SHA256
//! signature from the received request as Tencent does and answers with Tencent's
//! documented replies.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_channel::clock::Clock;
use herald_channel::testkit::ManualClock;
use herald_channel::{Accepted, Channel, ErrorKind, Health};
use herald_channel_sms::testing::tencent::*;
use herald_channel_sms::testing::*;
use serde_json::json;

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

/// The signature's timestamp is the clock the services lend: ten minutes behind, Tencent
/// refuses the request as expired.
#[tokio::test]
async fn the_timestamp_comes_from_the_lent_clock() {
    let vendor = Arc::new(TencentCloud::default());
    let server = Server::start(vendor.clone()).await;
    let behind = ManualClock::at(SystemTime::now() - Duration::from_secs(600));
    let channel = build_with(
        "sms.tencent",
        "tc",
        config(&server, SECRET_KEY),
        &behind.services(),
    )
    .expect("valid config");
    let err = channel.send(&report(1)).await.unwrap_err();
    assert_eq!(err.code(), Some("AuthFailure.SignatureExpire"), "{err}");
    let sent: u64 = server
        .only_request()
        .header("x-tc-timestamp")
        .expect("a timestamp")
        .parse()
        .expect("unix seconds");
    assert_eq!(sent, behind.unix_secs());
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
        vendor.accepted(),
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
    assert!(vendor.accepted().is_empty());
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
