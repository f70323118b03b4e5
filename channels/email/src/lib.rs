//! E-mail channel (skeleton; being written).
