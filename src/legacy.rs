//! Import of the old bot's JSON files into events, and export of the profile projection back to them.
