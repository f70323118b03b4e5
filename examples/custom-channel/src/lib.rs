//! Example third-party channel (skeleton; being written).
