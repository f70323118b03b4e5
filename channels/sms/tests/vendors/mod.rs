//! Local stand-ins for the three SMS vendors, served by the harness's `Server`
//! (`tests/common/mod.rs`): Aliyun's dysmsapi, Tencent Cloud's SMS API and Twilio's
//! Messages API. Each checks a request the way the vendor does (signatures recomputed from
//! what arrived) and answers with the vendor's documented replies; tests script failures
//! and read back what was accepted.
//!
//! Shared by this crate's tests and the server's end-to-end `tests/sms.rs`. Both include
//! the harness at their crate root under the name `sms_common`, which these modules use.

#![allow(dead_code)]

pub mod aliyun;
pub mod tencent;
pub mod twilio;
