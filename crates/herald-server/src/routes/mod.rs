pub mod admin;
pub mod commands;
pub mod ops;
pub mod read;
pub mod tokens;
