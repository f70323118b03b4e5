//! sms channels (being written).
