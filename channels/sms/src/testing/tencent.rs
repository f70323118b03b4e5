//! A local sms.tencentcloudapi.com that checks the `X-TC-*` headers, recomputes the
//! TC3-HMAC-SHA256 signature from the received request as Tencent does and answers with
//! Tencent's documented replies.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Answer, Recorded, Vendor};

/// The SecretId the fake knows; its key is [`SECRET_KEY`].
pub const SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
pub const SECRET_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
pub const APP_ID: &str = "1400006666";
/// The number every `SendStatusSet` entry names.
pub const PHONE: &str = "+8613711112222";
/// The `SerialNo` of every successful send.
pub const SERIAL: &str = "5000:1045710669157053657849499619";

/// A top-level `Response.Error`.
pub fn error(code: &str, message: &str) -> Answer {
    Answer::json(
        200,
        json!({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "ed93f3cb-f35e-473f-b9f3-0d451b8b79c6"}}),
    )
}

/// A `SendStatusSet` answer for one number.
pub fn status(code: &str, message: &str, serial: &str) -> Answer {
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

/// `SendSms` 2021-01-11 with TC3-HMAC-SHA256, answering `Ok` with [`SERIAL`] unless a
/// scripted answer is queued with [`TencentCloud::then`].
#[derive(Default)]
pub struct TencentCloud {
    script: Mutex<VecDeque<Answer>>,
    accepted: Mutex<Vec<serde_json::Value>>,
}

impl TencentCloud {
    /// Answer the next accepted request with `answer`.
    pub fn then(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    /// The JSON body of every accepted (signature-checked) request.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.accepted.lock().unwrap().clone()
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
