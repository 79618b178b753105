//! ferry-api: the messages ferry's processes exchange, and nothing else.
//!
//! Layer: bottom. Depends only on serde/ipnet. Must not do I/O beyond the
//! line framing helpers in [`wire`] and the one-shot blocking requests of
//! [`client`], and must not know about netlink, AF_XDP or the CNI
//! environment.
//!
//! - [`table`]: the versioned table-update API that ferryd speaks to
//!   ferry-dataplane over a Unix socket. The same messages are what the
//!   dataplane applies to its forwarding tables.
//! - [`pod`]: the request/response between the `ferry` CNI binary and ferryd
//!   (one request per CNI invocation). Version-neutral: the CNI binary turns
//!   a [`pod::PodResult`] into the result format of the cniVersion asked.
//! - [`objects`]: Kubernetes objects handed to ferryd (`ferryctl apply`),
//!   on the pod-API socket beside the CNI's requests.
//! - [`wire`]: newline-delimited JSON framing used by both sockets.
//! - [`client`]: one read-only request to ferryd or ferry-dataplane on a
//!   fresh connection (ferryctl, ferryd's metrics endpoint).

pub mod client;
pub mod mac;
pub mod objects;
pub mod pod;
pub mod table;
pub mod wire;

pub use mac::MacAddr;
