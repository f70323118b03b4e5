//! SMS end to end: `[channels.*]` config → REST API → outbox → `sms.aliyun` / `sms.tencent`
//! / `sms.twilio` → local vendor servers that check every request as the vendor does,
//! signatures recomputed from what arrived (`herald_channel_sms::testing`, shared with the
//! crate's own tests). Twilio's StatusCallback is signed as Twilio signs it and posted to
//! Herald's real route. Time moves by an injected clock, never by sleeping.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use herald_channel_sms::testing::Server;
use herald_channel_sms::testing::{aliyun, tencent, twilio};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn table(kind: &str, config: &Value) -> toml::Table {
    let mut t = toml::Table::try_from(config).expect("JSON object → TOML");
    t.insert("kind".into(), toml::Value::String(kind.into()));
    t
}

/// A server with the given `(instance, kind, config)` channels, a manual clock and the
/// repo's `templates/`.
async fn app_with(instances: &[(&str, &str, Value)]) -> TestApp {
    let tables: Vec<(String, toml::Table)> = instances
        .iter()
        .map(|(name, kind, config)| ((*name).to_owned(), table(kind, config)))
        .collect();
    spawn_app_clock(
        move |s| {
            for (name, t) in tables {
                s.channels.insert(name, t);
            }
            s.templates.dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"));
        },
        Some(herald::clock::ManualClock::default()),
    )
    .await
}

async fn put_phone(app: &TestApp, user: &str, phone: &str) {
    let (st, body) = app
        .api(
            Method::PUT,
            &format!("/api/v1/recipients/{user}"),
            Some(&json!({"name": format!("Patient {user}"), "phone": phone})),
        )
        .await;
    assert!(st == StatusCode::CREATED || st == StatusCode::OK, "{body}");
}

fn report_data() -> Value {
    json!({
        "patient_name": "李雷",
        "report_type": "CT chest",
        "report_id": "R-2026-0042",
        "hospital": "Herald General",
        "ready_at": "2026-11-29 09:30",
        "url": "https://reports.example.com/R-2026-0042"
    })
}

/// `templates/report_ready/sms.txt.j2` rendered with [`report_data`].
const REPORT_TEXT: &str = "[Herald General] 李雷, your CT chest report R-2026-0042 is ready. \
                           https://reports.example.com/R-2026-0042";

fn report(receiver: &str, channel: &str) -> Value {
    json!({"receivers": [receiver], "channels": [channel], "template": "report_ready", "data": report_data()})
}

fn status(d: &Value) -> &str {
    d["status"].as_str().unwrap_or_default()
}

fn error(d: &Value) -> &str {
    d["error"].as_str().unwrap_or_default()
}

/// A delivery id as the channel handed it to the vendor (`OutId`, `SessionContext`,
/// `?delivery=`): a positive integer.
#[track_caller]
fn delivery_id(s: &str) -> i64 {
    let id = s
        .parse::<i64>()
        .unwrap_or_else(|e| panic!("{s:?} is not a delivery id: {e}"));
    assert!(id > 0, "{id}");
    id
}

/// Waits until the first attempt of the delivery has failed and its retry is deferred
/// (`pending`, an error, due later); asserts it is due `by` after the injected clock's now.
async fn wait_deferred(
    app: &TestApp,
    id: &str,
    receiver: &str,
    channel: &str,
    by: Duration,
) -> Value {
    let d = app
        .wait_delivery(id, receiver, channel, "a deferred retry", |d| {
            status(d) == "pending" && d["attempts"] == 1 && d["error"].is_string()
        })
        .await;
    let now_ms = herald::clock::Clock::now_ms(app.clock.as_ref().expect("a manual clock"));
    let due = rfc3339(&d["nextAttemptAt"], "nextAttemptAt");
    let ahead_ms = (due.unix_timestamp_nanos() / 1_000_000) as i64 - now_ms;
    let by_ms = by.as_millis() as i64;
    assert!(
        (ahead_ms - by_ms).abs() <= 1_000,
        "due {ahead_ms} ms ahead, expected {by_ms}: {d}"
    );
    d
}

async fn channel_info(app: &TestApp, name: &str) -> Value {
    let (st, channels) = app.api_get("/api/v1/channels").await;
    assert_eq!(st, StatusCode::OK, "{channels}");
    channels
        .as_array()
        .unwrap_or_else(|| panic!("channels is not an array: {channels}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no channel {name} in {channels}"))
        .clone()
}

// ---------------------------------------------------------------------------------------------
// sms.aliyun
// ---------------------------------------------------------------------------------------------

fn aliyun_config(server: &Server, signature: &str) -> Value {
    json!({
        "access_key_id": aliyun::KEY_ID,
        "access_key_secret": aliyun::SECRET,
        "sign_name": "阿里云短信测试",
        "endpoint": server.url(),
        "signature": signature,
        "timeout": "5s",
        "templates": {
            "report_ready": {
                "template_code": "SMS_71390007",
                "params": {"customer": "patient_name", "report": "report_id"}
            }
        }
    })
}

/// The `SendSms` parameters Herald's `report_ready` send maps to, for delivery `out_id`.
fn aliyun_report_params(out_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("OutId".to_owned(), out_id.to_owned()),
        ("PhoneNumbers".to_owned(), "13800000000".to_owned()),
        ("SignName".to_owned(), "阿里云短信测试".to_owned()),
        ("TemplateCode".to_owned(), "SMS_71390007".to_owned()),
        (
            "TemplateParam".to_owned(),
            r#"{"customer":"李雷","report":"R-2026-0042"}"#.to_owned(),
        ),
    ])
}

#[tokio::test]
async fn aliyun_sends_a_signed_send_sms_and_keeps_the_biz_id() {
    let vendor = Arc::new(aliyun::Dysmsapi::default());
    let server = Server::start(vendor.clone()).await;
    // Both signature schemes, on two instances of the one kind.
    let app = app_with(&[
        ("sms", "sms.aliyun", aliyun_config(&server, "v1")),
        ("sms3", "sms.aliyun", aliyun_config(&server, "acs3")),
    ])
    .await;
    put_phone(&app, "p1", aliyun::PHONE).await;

    for (n, (channel, scheme)) in [("sms", "v1"), ("sms3", "acs3")].into_iter().enumerate() {
        let id = send_ok(&app, report("p1", channel)).await;
        let d = app
            .wait_delivery(&id, "p1", channel, "sent", |d| status(d) == "sent")
            .await;
        assert_eq!(d["providerId"], aliyun::BIZ_ID, "{scheme}: {d}");
        assert_eq!(d["attempts"], 1, "{scheme}: {d}");
        assert!(d.get("error").is_none(), "{scheme}: {d}");

        // Only a request whose signature the vendor recomputed is accepted.
        let accepted = vendor.accepted();
        assert_eq!(accepted.len(), n + 1, "{scheme}: {accepted:#?}");
        let params = &accepted[n];
        delivery_id(&params["OutId"]);
        assert_eq!(params, &aliyun_report_params(&params["OutId"]), "{scheme}");
        let request = &server.requests()[n];
        assert_eq!(request.method, "POST", "{scheme}");
        match scheme {
            "v1" => {
                let form = request.form();
                assert_eq!(form["Action"], "SendSms");
                assert_eq!(form["SignatureMethod"], "HMAC-SHA1");
                assert_eq!(request.query, "", "nothing in the URL");
            }
            _ => assert!(
                request
                    .header("authorization")
                    .is_some_and(|a| a.starts_with("ACS3-HMAC-SHA256 Credential=")),
                "{request:?}"
            ),
        }
    }
    let sms = channel_info(&app, "sms").await;
    assert_eq!(
        (sms["kind"].as_str(), sms["health"].as_str()),
        (Some("sms.aliyun"), Some("ok")),
        "{sms}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn aliyun_flow_control_defers_an_hour_and_an_illegal_number_fails_once() {
    let vendor = Arc::new(aliyun::Dysmsapi::default());
    let server = Server::start(vendor.clone()).await;
    let app = app_with(&[("sms", "sms.aliyun", aliyun_config(&server, "v1"))]).await;
    put_phone(&app, "p1", aliyun::PHONE).await;

    // Per-number flow control: deferred by the hour Aliyun's window needs, not retried now.
    vendor.then(aliyun::business(
        "isv.BUSINESS_LIMIT_CONTROL",
        "触发小时级流控Permits:5",
    ));
    let id = send_ok(&app, report("p1", "sms")).await;
    let d = wait_deferred(&app, &id, "p1", "sms", Duration::from_secs(3600)).await;
    assert!(
        error(&d).starts_with("rate_limited: [isv.BUSINESS_LIMIT_CONTROL]"),
        "{d}"
    );
    assert!(d.get("providerId").is_none(), "{d}");
    assert_eq!(vendor.accepted().len(), 1);
    let sms = channel_info(&app, "sms").await;
    assert_eq!(
        (sms["retrying"].as_i64(), sms["health"].as_str()),
        (Some(1), Some("ok")),
        "flow control is no account problem: {sms}"
    );

    app.advance(Duration::from_secs(3601));
    let d = app
        .wait_delivery(&id, "p1", "sms", "sent on attempt 2", |d| {
            status(d) == "sent"
        })
        .await;
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(d["providerId"], aliyun::BIZ_ID, "{d}");
    let accepted = vendor.accepted();
    assert_eq!(accepted.len(), 2);
    assert_eq!(
        accepted[0], accepted[1],
        "the retry sends the same SendSms (same OutId)"
    );

    // An illegal number: bad_recipient, never retried, the number not in the error.
    vendor.then(aliyun::business(
        "isv.MOBILE_NUMBER_ILLEGAL",
        "非法手机号 13800000000",
    ));
    let id = send_ok(&app, report("p1", "sms")).await;
    let d = app
        .wait_delivery(&id, "p1", "sms", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert!(
        error(&d).starts_with("bad_recipient: [isv.MOBILE_NUMBER_ILLEGAL]"),
        "{d}"
    );
    assert!(!error(&d).contains("13800000000"), "{d}");
    assert_eq!(vendor.accepted().len(), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn aliyun_an_unmapped_template_fails_as_config_and_nothing_is_sent() {
    let vendor = Arc::new(aliyun::Dysmsapi::default());
    let server = Server::start(vendor.clone()).await;
    // `report_ready` has an `sms.txt.j2`, so the send is accepted; the instance has no
    // `[channels.sms.templates.report_ready]`.
    let mut config = aliyun_config(&server, "v1");
    config["templates"] = json!({"otp": {"template_code": "SMS_0000001"}});
    let app = app_with(&[("sms", "sms.aliyun", config)]).await;
    put_phone(&app, "p1", aliyun::PHONE).await;
    let id = send_ok(&app, report("p1", "sms")).await;
    let d = app
        .wait_delivery(&id, "p1", "sms", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert!(error(&d).starts_with("config: "), "{d}");
    assert!(error(&d).contains("`report_ready`"), "{d}");
    assert!(server.requests().is_empty(), "nothing reached the vendor");
    app.shutdown().await;
}

#[tokio::test]
async fn a_recipient_without_a_phone_is_no_address_and_a_bad_phone_is_refused() {
    let vendor = Arc::new(aliyun::Dysmsapi::default());
    let server = Server::start(vendor.clone()).await;
    let app = app_with(&[("sms", "sms.aliyun", aliyun_config(&server, "v1"))]).await;

    // Not E.164: refused at the API, naming the field.
    let (st, body) = app
        .api(
            Method::PUT,
            "/api/v1/recipients/bad",
            Some(&json!({"phone": "13800000000"})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "phone", "{body}");
    assert!(assert_error_body(&body).starts_with("phone: "), "{body}");
    let (st, _) = app.api_get("/api/v1/recipients/bad").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "nothing stored");

    // A recipient without a phone: no_address at once, nothing sent.
    let (st, body) = app
        .api(
            Method::PUT,
            "/api/v1/recipients/n",
            Some(&json!({"name": "N", "email": "n@example.com"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let id = send_ok(&app, report("n", "sms")).await;
    let d = app.delivery(&id, "n", "sms").await;
    assert_eq!((status(&d), error(&d)), ("failed", "no_address"), "{d}");
    assert_eq!(d["attempts"], 0, "{d}");

    // The same send to a recipient with a phone goes out: the instance works.
    put_phone(&app, "p1", aliyun::PHONE).await;
    let id = send_ok(&app, report("p1", "sms")).await;
    app.wait_delivery(&id, "p1", "sms", "sent", |d| status(d) == "sent")
        .await;
    assert_eq!(server.requests().len(), 1, "only p1's delivery was sent");
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// sms.tencent
// ---------------------------------------------------------------------------------------------

fn tencent_config(server: &Server) -> Value {
    json!({
        "secret_id": tencent::SECRET_ID,
        "secret_key": tencent::SECRET_KEY,
        "sms_sdk_app_id": tencent::APP_ID,
        "sign_name": "腾讯云",
        "region": "ap-guangzhou",
        "endpoint": server.url(),
        "timeout": "5s",
        "templates": {
            "report_ready": {"template_id": 1110, "params": ["patient_name", "report_id"]}
        }
    })
}

#[tokio::test]
async fn tencent_sends_a_signed_send_sms_and_keeps_the_serial_no() {
    let vendor = Arc::new(tencent::TencentCloud::default());
    let server = Server::start(vendor.clone()).await;
    let app = app_with(&[("tc", "sms.tencent", tencent_config(&server))]).await;
    put_phone(&app, "p1", tencent::PHONE).await;
    let id = send_ok(&app, report("p1", "tc")).await;
    let d = app
        .wait_delivery(&id, "p1", "tc", "sent", |d| status(d) == "sent")
        .await;
    assert_eq!(d["providerId"], tencent::SERIAL, "{d}");
    assert_eq!(d["attempts"], 1, "{d}");

    // Only a request whose TC3 signature the vendor recomputed is accepted.
    let accepted = vendor.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    let body = &accepted[0];
    delivery_id(body["SessionContext"].as_str().expect("SessionContext"));
    assert_eq!(
        body,
        &json!({
            "PhoneNumberSet": [tencent::PHONE],
            "SmsSdkAppId": tencent::APP_ID,
            "TemplateId": "1110",
            "SignName": "腾讯云",
            "TemplateParamSet": ["李雷", "R-2026-0042"],
            "SessionContext": body["SessionContext"],
        })
    );
    let request = server.only_request();
    assert_eq!(request.header("x-tc-action"), Some("SendSms"));
    assert_eq!(request.header("x-tc-region"), Some("ap-guangzhou"));
    let tc = channel_info(&app, "tc").await;
    assert_eq!(
        (tc["kind"].as_str(), tc["health"].as_str()),
        (Some("sms.tencent"), Some("ok")),
        "{tc}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn tencent_a_daily_limit_defers_and_an_incorrect_number_fails_once() {
    let vendor = Arc::new(tencent::TencentCloud::default());
    let server = Server::start(vendor.clone()).await;
    let app = app_with(&[("tc", "sms.tencent", tencent_config(&server))]).await;
    put_phone(&app, "p1", tencent::PHONE).await;

    vendor.then(tencent::status(
        "LimitExceeded.PhoneNumberDailyLimit",
        "单个手机号日下发短信条数超过设定的上限",
        "",
    ));
    let id = send_ok(&app, report("p1", "tc")).await;
    let d = wait_deferred(&app, &id, "p1", "tc", Duration::from_secs(3600)).await;
    assert!(
        error(&d).starts_with("rate_limited: [LimitExceeded.PhoneNumberDailyLimit]"),
        "{d}"
    );
    assert_eq!(vendor.accepted().len(), 1);
    app.advance(Duration::from_secs(3601));
    let d = app
        .wait_delivery(&id, "p1", "tc", "sent on attempt 2", |d| {
            status(d) == "sent"
        })
        .await;
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(d["providerId"], tencent::SERIAL, "{d}");
    assert_eq!(vendor.accepted().len(), 2);

    vendor.then(tencent::status(
        "InvalidParameterValue.IncorrectPhoneNumber",
        "手机号格式错误 +8613711112222",
        "",
    ));
    let id = send_ok(&app, report("p1", "tc")).await;
    let d = app
        .wait_delivery(&id, "p1", "tc", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert!(
        error(&d).starts_with("bad_recipient: [InvalidParameterValue.IncorrectPhoneNumber]"),
        "{d}"
    );
    assert!(!error(&d).contains("13711112222"), "{d}");
    assert_eq!(vendor.accepted().len(), 3);
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// sms.twilio
// ---------------------------------------------------------------------------------------------

/// Instance `tw`, whose public callback URL is [`twilio::CALLBACK`].
fn twilio_config(server: &Server) -> Value {
    json!({
        "account_sid": twilio::SID,
        "auth_token": twilio::TOKEN,
        "from": twilio::FROM,
        "status_callback_url": twilio::CALLBACK,
        "endpoint": server.url(),
        "timeout": "5s",
    })
}

/// What Twilio posts to a StatusCallback for `status`.
fn twilio_status<'a>(status: &'a str, error_code: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("AccountSid", twilio::SID),
        ("ApiVersion", "2010-04-01"),
        ("From", twilio::FROM),
        ("MessageSid", twilio::MESSAGE_SID),
        ("MessageStatus", status),
        ("SmsSid", twilio::MESSAGE_SID),
        ("SmsStatus", status),
        ("To", twilio::TO),
    ];
    if let Some(code) = error_code {
        params.push(("ErrorCode", code));
    }
    params
}

/// `POST {path}` on Herald as Twilio would: the form body and `X-Twilio-Signature`.
async fn post_callback(
    app: &TestApp,
    path: &str,
    signature: &str,
    params: &[(&str, &str)],
) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(twilio::form_body(params))
        .send()
        .await
        .expect("callback request");
    read_response(resp).await
}

/// Sends `report_ready` to `user` over `tw`, waits for `sent` and returns the message id
/// and the StatusCallback Twilio was given.
async fn twilio_send(app: &TestApp, vendor: &twilio::TwilioApi, user: &str) -> (String, String) {
    let before = vendor.accepted().len();
    let id = send_ok(app, report(user, "tw")).await;
    let d = app
        .wait_delivery(&id, user, "tw", "sent", |d| status(d) == "sent")
        .await;
    assert_eq!(d["providerId"], twilio::MESSAGE_SID, "{d}");
    assert_eq!(d["attempts"], 1, "{d}");
    let accepted = vendor.accepted();
    assert_eq!(accepted.len(), before + 1, "{accepted:#?}");
    let form = &accepted[before];
    let callback = form["StatusCallback"].clone();
    let delivery = callback
        .strip_prefix(&format!("{}?delivery=", twilio::CALLBACK))
        .unwrap_or_else(|| panic!("StatusCallback {callback}"));
    delivery_id(delivery);
    assert_eq!(
        form,
        &BTreeMap::from([
            ("To".to_owned(), twilio::TO.to_owned()),
            ("From".to_owned(), twilio::FROM.to_owned()),
            ("Body".to_owned(), REPORT_TEXT.to_owned()),
            ("StatusCallback".to_owned(), callback.clone()),
        ])
    );
    (id, callback)
}

/// Herald's route for the signed StatusCallback URL (same path, same query).
fn local_path(callback: &str) -> String {
    let query = callback.split_once('?').expect("a query").1;
    format!("/api/v1/callbacks/twilio/tw?{query}")
}

#[tokio::test]
async fn twilio_sends_the_rendered_text_and_a_signed_status_callback_marks_it_delivered() {
    let vendor = Arc::new(twilio::TwilioApi::default());
    let server = Server::start(vendor.clone()).await;
    let app = app_with(&[("tw", "sms.twilio", twilio_config(&server))]).await;
    put_phone(&app, "p1", twilio::TO).await;
    let (id, callback) = twilio_send(&app, &vendor, "p1").await;
    let path = local_path(&callback);
    let delivered = twilio_status("delivered", None);

    // Signed with another token: 401, nothing changes.
    let forged = twilio::twilio_sign("not-the-auth-token", &callback, &delivered);
    let (st, body) = post_callback(&app, &path, &forged, &delivered).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    // Signed for another delivery id than the one posted: 401 too.
    let other = format!("{}?delivery=999999", twilio::CALLBACK);
    let misdirected = twilio::twilio_sign(twilio::TOKEN, &other, &delivered);
    let (st, body) = post_callback(&app, &path, &misdirected, &delivered).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    // The right signature on another kind's route: no such callback.
    let signature = twilio::twilio_sign(twilio::TOKEN, &callback, &delivered);
    let wrong_route = path.replace("/twilio/", "/aliyun/");
    let (st, body) = post_callback(&app, &wrong_route, &signature, &delivered).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    let d = app.delivery(&id, "p1", "tw").await;
    assert_eq!(status(&d), "sent", "{d}");

    // Signed as Twilio signs the URL it was given: 204, and the delivery is delivered.
    let (st, body) = post_callback(&app, &path, &signature, &delivered).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let d = app
        .wait_delivery(&id, "p1", "tw", "delivered", |d| status(d) == "delivered")
        .await;
    assert_eq!(d["providerId"], twilio::MESSAGE_SID, "{d}");
    assert_eq!(d["attempts"], 1, "a receipt is no attempt: {d}");
    assert_eq!(server.requests().len(), 1);
    let tw = channel_info(&app, "tw").await;
    assert_eq!(
        (tw["kind"].as_str(), tw["delivered"].as_u64()),
        (Some("sms.twilio"), Some(1)),
        "{tw}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn twilio_an_undelivered_status_callback_fails_the_delivery() {
    let vendor = Arc::new(twilio::TwilioApi::default());
    let server = Server::start(vendor.clone()).await;
    let app = app_with(&[("tw", "sms.twilio", twilio_config(&server))]).await;
    put_phone(&app, "p1", twilio::TO).await;
    let (id, callback) = twilio_send(&app, &vendor, "p1").await;

    // Progress reports change nothing.
    let sending = twilio_status("sending", None);
    let signature = twilio::twilio_sign(twilio::TOKEN, &callback, &sending);
    let (st, body) = post_callback(&app, &local_path(&callback), &signature, &sending).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");

    let undelivered = twilio_status("undelivered", Some("30003"));
    let signature = twilio::twilio_sign(twilio::TOKEN, &callback, &undelivered);
    let (st, body) = post_callback(&app, &local_path(&callback), &signature, &undelivered).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let d = app
        .wait_delivery(&id, "p1", "tw", "failed", |d| status(d) == "failed")
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    // The receipt is final: 30003 (handset unreachable, retried at send time) reads as
    // permanent, with Twilio's code.
    assert!(error(&d).starts_with("permanent: [30003] "), "{d}");
    assert!(!error(&d).contains("4155550100"), "{d}");
    assert_eq!(server.requests().len(), 1, "a receipt is not retried");
    app.shutdown().await;
}
