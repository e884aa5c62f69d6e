//! keyturn agent library.
