//! `sms.twilio` end to end, built through its descriptor, against a local Twilio Messages
//! API (`herald_channel_sms::testing::twilio`) that checks HTTP Basic auth and the form as Twilio does and
//! answers with Twilio's documented Message and error bodies; and StatusCallbacks signed the
//! way Twilio signs them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_channel::testkit::{message, outgoing, rendered};
use herald_channel::{
    Accepted, CallbackError, CallbackRequest, Channel, ErrorKind, Health, Receipt, ReceiptFor,
};
use herald_channel_sms::testing::twilio::*;
use herald_channel_sms::testing::*;
use serde_json::json;

/// Call the channel's callback as the core does for `POST …?{query}` with `body`.
async fn deliver_callback(
    ch: &dyn Channel,
    query: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Vec<Receipt>, CallbackError> {
    let mut headers = vec![(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some(sig) = signature {
        headers.push(("x-twilio-signature".to_owned(), sig.to_owned()));
    }
    ch.callback(&CallbackRequest {
        query,
        headers: &headers,
        body,
    })
    .await
}

fn config(server: &Server, token: &str) -> serde_json::Value {
    json!({
        "account_sid": SID,
        "auth_token": token,
        "from": FROM,
        "status_callback_url": CALLBACK,
        "endpoint": server.url(),
        "timeout": "5s",
    })
}

async fn setup() -> (Arc<TwilioApi>, Server, Arc<dyn Channel>) {
    let vendor = Arc::new(TwilioApi::default());
    let server = Server::start(vendor.clone()).await;
    let channel = build("sms.twilio", "tw", config(&server, TOKEN)).expect("valid config");
    (vendor, server, channel)
}

fn text_message(delivery_id: i64) -> herald_channel::Outgoing {
    let mut out = outgoing(
        message("Report ready", "Report R-42 is ready."),
        "patient-7",
        Some(TO),
    );
    out.delivery_id = delivery_id;
    out
}

#[tokio::test]
async fn posts_the_form_with_basic_auth_and_returns_the_message_sid() {
    let (vendor, server, ch) = setup().await;
    let sent = ch.send(&text_message(31)).await.expect("accepted");
    assert_eq!(
        sent,
        Accepted::Sent {
            provider_id: Some(MESSAGE_SID.into())
        }
    );
    let req = server.only_request();
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{SID}/Messages.json")
    );
    assert_eq!(
        vendor.accepted(),
        [BTreeMap::from([
            ("To".to_owned(), TO.to_owned()),
            ("From".to_owned(), FROM.to_owned()),
            (
                "Body".to_owned(),
                "Report ready\nReport R-42 is ready.".to_owned()
            ),
            (
                "StatusCallback".to_owned(),
                format!("{CALLBACK}?delivery=31")
            ),
        ])]
    );
    assert_eq!(ch.health(), Health::Ok);
}

#[tokio::test]
async fn a_messaging_service_and_the_rendered_text() {
    let vendor = Arc::new(TwilioApi::default());
    let server = Server::start(vendor.clone()).await;
    let ch = build(
        "sms.twilio",
        "tw",
        json!({
            "account_sid": SID,
            "auth_token": TOKEN,
            "messaging_service_sid": SERVICE,
            "endpoint": format!("{}/", server.url()),
        }),
    )
    .unwrap();
    let mut out = text_message(5);
    out.rendered = Some(rendered(&[(
        "txt",
        "Hi Zhang San, report R-42 is ready. 你好\n",
    )]));
    ch.send(&out).await.expect("accepted");
    let form = &vendor.accepted()[0];
    assert_eq!(form["MessagingServiceSid"], SERVICE);
    assert!(!form.contains_key("From"));
    assert!(
        !form.contains_key("StatusCallback"),
        "no status_callback_url configured"
    );
    assert_eq!(form["Body"], "Hi Zhang San, report R-42 is ready. 你好");

    // Without a StatusCallback there is nothing to verify callbacks against.
    let err = deliver_callback(
        ch.as_ref(),
        "delivery=5",
        Some("x"),
        b"MessageStatus=delivered",
    )
    .await;
    assert_eq!(err, Err(CallbackError::NotSupported));
}

#[tokio::test]
async fn too_many_requests_is_rate_limited_honouring_retry_after() {
    let (vendor, _server, ch) = setup().await;
    vendor.then(twilio_error(429, 20429, "Too Many Requests").with_header("retry-after", "30"));
    vendor.then(twilio_error(429, 20429, "Too Many Requests"));
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::RateLimited, Some("20429"))
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.retry_after()),
        (ErrorKind::RateLimited, None)
    );
}

#[tokio::test]
async fn an_invalid_to_is_a_bad_recipient() {
    let (vendor, _server, ch) = setup().await;
    vendor.then(twilio_error(
        400,
        21211,
        "The 'To' number +14155550100 is not a valid phone number.",
    ));
    vendor.then(twilio_error(
        400,
        21610,
        "Attempt to send to unsubscribed recipient",
    ));
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::BadRecipient, Some("21211"))
    );
    assert!(!err.to_string().contains("4155550100"), "{err}");
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::BadRecipient, Some("21610"))
    );
}

#[tokio::test]
async fn other_4xx_are_permanent_and_5xx_transient() {
    let (vendor, _server, ch) = setup().await;
    vendor.then(twilio_error(
        400,
        21408,
        "Permission to send an SMS has not been enabled for the region",
    ));
    vendor.then(twilio_error(500, 20500, "Internal Server Error"));
    vendor.then(Answer {
        status: 503,
        headers: vec![],
        body: "upstream unavailable".into(),
    });
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Permanent, Some("21408"))
    );
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Transient, Some("20500"))
    );
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!((err.kind(), err.code()), (ErrorKind::Transient, None));
}

#[tokio::test]
async fn a_wrong_auth_token_is_config_and_takes_the_channel_down() {
    let vendor = Arc::new(TwilioApi::default());
    let server = Server::start(vendor.clone()).await;
    let ch = build(
        "sms.twilio",
        "tw",
        config(&server, "twilio-test-auth-tokeN"),
    )
    .unwrap();
    let err = ch.send(&text_message(1)).await.unwrap_err();
    assert_eq!((err.kind(), err.code()), (ErrorKind::Config, Some("20003")));
    assert!(!err.to_string().contains("tokeN"), "{err}");
    assert!(vendor.accepted().is_empty());
    assert!(matches!(ch.health(), Health::Down(_)));
}

#[tokio::test]
async fn signed_status_callbacks_become_receipts() {
    let (vendor, _server, ch) = setup().await;
    ch.send(&text_message(31)).await.expect("accepted");
    // Exactly the URL Twilio was given, and so signs.
    let url = vendor.accepted()[0]["StatusCallback"].clone();
    let query = url.split_once('?').expect("a query").1.to_owned();
    assert_eq!(query, "delivery=31");

    let report = |status: &'static str, error: Option<&'static str>| {
        let mut params = vec![
            ("AccountSid", SID),
            ("ApiVersion", "2010-04-01"),
            ("From", FROM),
            ("MessageSid", MESSAGE_SID),
            ("MessageStatus", status),
            ("SmsSid", MESSAGE_SID),
            ("SmsStatus", status),
            ("To", TO),
        ];
        if let Some(code) = error {
            params.push(("ErrorCode", code));
        }
        params
    };

    let delivered = report("delivered", None);
    let sig = twilio_sign(TOKEN, &url, &delivered);
    let receipts = deliver_callback(ch.as_ref(), &query, Some(&sig), &form_body(&delivered)).await;
    assert_eq!(
        receipts,
        Ok(vec![Receipt::Delivered(ReceiptFor::Delivery(31))])
    );

    let failed = report("undelivered", Some("30006"));
    let sig = twilio_sign(TOKEN, &url, &failed);
    let receipts = deliver_callback(ch.as_ref(), &query, Some(&sig), &form_body(&failed))
        .await
        .unwrap();
    let [Receipt::Failed(ReceiptFor::Delivery(31), error)] = &receipts[..] else {
        panic!("{receipts:?}")
    };
    assert_eq!(
        (error.kind(), error.code()),
        (ErrorKind::BadRecipient, Some("30006"))
    );

    let failed = report("failed", Some("30008"));
    let sig = twilio_sign(TOKEN, &url, &failed);
    let receipts = deliver_callback(ch.as_ref(), &query, Some(&sig), &form_body(&failed))
        .await
        .unwrap();
    assert!(
        matches!(&receipts[..], [Receipt::Failed(ReceiptFor::Delivery(31), e)] if e.code() == Some("30008"))
    );

    for status in ["queued", "sending", "sent", "accepted"] {
        let params = report(status, None);
        let sig = twilio_sign(TOKEN, &url, &params);
        let receipts = deliver_callback(ch.as_ref(), &query, Some(&sig), &form_body(&params)).await;
        assert_eq!(receipts, Ok(vec![]), "{status}");
    }

    // No delivery id in the URL: the receipt names Twilio's MessageSid.
    let sig = twilio_sign(TOKEN, CALLBACK, &delivered);
    let receipts = deliver_callback(ch.as_ref(), "", Some(&sig), &form_body(&delivered)).await;
    assert_eq!(
        receipts,
        Ok(vec![Receipt::Delivered(ReceiptFor::Provider(
            MESSAGE_SID.into()
        ))])
    );

    // Twilio signing the URL with the explicit default port is accepted too.
    let with_port = url.replace("herald.example.com", "herald.example.com:443");
    let sig = twilio_sign(TOKEN, &with_port, &delivered);
    assert!(
        deliver_callback(ch.as_ref(), &query, Some(&sig), &form_body(&delivered))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn badly_signed_or_malformed_callbacks_are_refused() {
    let (vendor, _server, ch) = setup().await;
    ch.send(&text_message(31)).await.expect("accepted");
    let url = vendor.accepted()[0]["StatusCallback"].clone();
    let params = [("MessageSid", MESSAGE_SID), ("MessageStatus", "delivered")];
    let body = form_body(&params);
    let unauthorized =
        |r: Result<Vec<Receipt>, CallbackError>| matches!(r, Err(CallbackError::Unauthorized(_)));

    // Another token.
    let sig = twilio_sign("not-the-token", &url, &params);
    assert!(unauthorized(
        deliver_callback(ch.as_ref(), "delivery=31", Some(&sig), &body).await
    ));
    // No signature.
    assert!(unauthorized(
        deliver_callback(ch.as_ref(), "delivery=31", None, &body).await
    ));
    // Garbage signature.
    assert!(unauthorized(
        deliver_callback(ch.as_ref(), "delivery=31", Some("%%%"), &body).await
    ));
    // A correct signature, but the body was changed afterwards.
    let sig = twilio_sign(TOKEN, &url, &params);
    let tampered = form_body(&[("MessageSid", MESSAGE_SID), ("MessageStatus", "failed")]);
    assert!(unauthorized(
        deliver_callback(ch.as_ref(), "delivery=31", Some(&sig), &tampered).await
    ));
    // … or the delivery id in the URL.
    assert!(unauthorized(
        deliver_callback(ch.as_ref(), "delivery=32", Some(&sig), &body).await
    ));
    // Signed, but without a status.
    let no_status = [("MessageSid", MESSAGE_SID)];
    let sig = twilio_sign(TOKEN, &url, &no_status);
    let r = deliver_callback(
        ch.as_ref(),
        "delivery=31",
        Some(&sig),
        &form_body(&no_status),
    )
    .await;
    assert!(matches!(r, Err(CallbackError::BadRequest(_))), "{r:?}");
    // Signed, but the delivery id is not a number.
    let odd = format!("{CALLBACK}?delivery=abc");
    let sig = twilio_sign(TOKEN, &odd, &params);
    let r = deliver_callback(ch.as_ref(), "delivery=abc", Some(&sig), &body).await;
    assert!(matches!(r, Err(CallbackError::BadRequest(_))), "{r:?}");
}
