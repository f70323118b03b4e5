//! A local dysmsapi that recomputes RPC v1 and ACS3 signatures from the received request as
//! Aliyun does and answers with Aliyun's documented replies.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{iso_utc, Answer, Recorded, Vendor};

/// The AccessKey the fake knows; its secret is [`SECRET`].
pub const KEY_ID: &str = "LTAI5tHeraldTestKey";
pub const SECRET: &str = "aliyun-test-secret";
/// A mainland number as a recipient record holds it.
pub const PHONE: &str = "+8613800000000";
/// The `BizId` of every successful send.
pub const BIZ_ID: &str = "900619746936498440^0";

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

/// An error of the POP gateway (signature, credentials, …).
pub fn gateway_error(status: u16, code: &str, message: &str) -> Answer {
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

/// A `SendSms` business reply with `Code` other than `OK`.
pub fn business(code: &str, message: &str) -> Answer {
    Answer::json(
        200,
        json!({"Code": code, "Message": message, "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990"}),
    )
}

/// The dysmsapi `SendSms` endpoint (RPC v1 and ACS3), answering `OK` with [`BIZ_ID`] unless
/// a scripted answer is queued with [`Dysmsapi::then`].
#[derive(Default)]
pub struct Dysmsapi {
    nonces: Mutex<HashSet<String>>,
    script: Mutex<VecDeque<Answer>>,
    /// The `SendSms` parameters of every accepted (signature-checked) request.
    accepted: Mutex<Vec<BTreeMap<String, String>>>,
}

impl Dysmsapi {
    /// Answer the next accepted request with `answer`.
    pub fn then(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    /// The `SendSms` parameters of every accepted request (common parameters removed).
    pub fn accepted(&self) -> Vec<BTreeMap<String, String>> {
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
