//! The CNI spec versions ferry speaks, in order.

use std::fmt;

use crate::error::CniError;

/// A supported `cniVersion`. Ordered oldest to newest so feature gates read
/// as comparisons (`v >= CniVersion::V0_4_0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    /// What ferry answers with when the runtime did not say (VERSION without
    /// a config, errors before the config could be read).
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn result_has_ip_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    pub fn supported_list() -> String {
        Self::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Code 1 for a version ferry does not speak.
    pub fn parse(s: &str) -> Result<CniVersion, CniError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::incompatible_version(format!(
                    "cniVersion {s:?} is not supported by ferry; supported versions: {}",
                    Self::supported_list()
                ))
            })
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
        for bad in ["", "0.1.0", "0.2.0", "1.2.0", "1.0", "v1.0.0", " 1.0.0"] {
            let e = CniVersion::parse(bad).unwrap_err();
            assert_eq!(e.code, 1, "{bad}");
            assert!(e.msg.contains("supported versions"), "{}", e.msg);
        }
        assert!(CniVersion::V0_3_1 < CniVersion::V0_4_0);
        assert!(CniVersion::V0_4_0.result_has_ip_version());
        assert!(!CniVersion::V1_0_0.result_has_ip_version());
    }
}
