//! wechat channels (being written).
