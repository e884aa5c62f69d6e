//! keyturn-init library.
