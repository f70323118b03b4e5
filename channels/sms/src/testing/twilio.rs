//! A local api.twilio.com that checks HTTP Basic auth and the form as Twilio does and answers
//! with Twilio's documented Message and error bodies; and `X-Twilio-Signature` computed the
//! way Twilio signs its StatusCallbacks.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;

use super::{Answer, Recorded, Vendor};

/// The account the fake knows; its Auth Token is [`TOKEN`].
pub const SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TOKEN: &str = "twilio-test-auth-token";
pub const FROM: &str = "+15005550006";
pub const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";
/// A public `status_callback_url` of Herald's route for an instance named `tw`.
pub const CALLBACK: &str = "https://herald.example.com/api/v1/callbacks/twilio/tw";
/// The `sid` of every successful send.
pub const MESSAGE_SID: &str = "SM9f1c2a0e4b5d6c7e8f9a0b1c2d3e4f5a";
pub const TO: &str = "+14155550100";

/// Twilio's error body with HTTP `status`.
pub fn twilio_error(status: u16, code: u32, message: &str) -> Answer {
    Answer::json(
        status,
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

/// `POST /2010-04-01/Accounts/{SID}/Messages.json` with HTTP Basic auth, answering `201`
/// with [`MESSAGE_SID`] unless a scripted answer is queued with [`TwilioApi::then`].
#[derive(Default)]
pub struct TwilioApi {
    script: Mutex<VecDeque<Answer>>,
    accepted: Mutex<Vec<BTreeMap<String, String>>>,
}

impl TwilioApi {
    /// Answer the next accepted request with `answer`.
    pub fn then(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    /// The form of every accepted request.
    pub fn accepted(&self) -> Vec<BTreeMap<String, String>> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Vendor for TwilioApi {
    fn answer(&self, req: &Recorded) -> Answer {
        let credentials = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if credentials.as_deref() != Some(&format!("{SID}:{TOKEN}")) {
            return twilio_error(401, 20003, "Authenticate");
        }
        if req.method != "POST" || req.path != format!("/2010-04-01/Accounts/{SID}/Messages.json") {
            return twilio_error(404, 20404, "The requested resource was not found");
        }
        if req.header("content-type") != Some("application/x-www-form-urlencoded") {
            return twilio_error(400, 21601, "Content type must be form-urlencoded");
        }
        let form = req.form();
        if !form.contains_key("To") {
            return twilio_error(400, 21604, "A 'To' phone number is required.");
        }
        if form.contains_key("From") == form.contains_key("MessagingServiceSid") {
            return twilio_error(400, 21603, "A 'From' phone number is required.");
        }
        if form.get("Body").is_none_or(String::is_empty) {
            return twilio_error(400, 21602, "Message body is required.");
        }
        self.accepted.lock().unwrap().push(form.clone());
        self.script.lock().unwrap().pop_front().unwrap_or_else(|| {
            Answer::json(
                201,
                json!({
                    "account_sid": SID,
                    "api_version": "2010-04-01",
                    "body": form["Body"],
                    "direction": "outbound-api",
                    "error_code": null,
                    "error_message": null,
                    "from": form.get("From"),
                    "messaging_service_sid": form.get("MessagingServiceSid"),
                    "num_segments": "1",
                    "sid": MESSAGE_SID,
                    "status": "queued",
                    "to": form["To"],
                    "uri": format!("/2010-04-01/Accounts/{SID}/Messages/{MESSAGE_SID}.json"),
                }),
            )
        })
    }
}

/// `X-Twilio-Signature` as Twilio computes it: base64(HMAC-SHA1(token, URL + every POST
/// parameter's name and value, sorted by name)).
pub fn twilio_sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `params` as an `application/x-www-form-urlencoded` body.
pub fn form_body(params: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}
