//! How close a model is to its rate ceilings, as the router weighs it. The estimates
//! themselves are live state (`live::pace`); this is the pure reading of them.

/// What the router reads: estimated use in the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub model_rpm: f64,
    pub model_tpm: f64,
    pub provider_rpm: f64,
    pub provider_tpm: f64,
}

/// The weight factor for a load against ceilings (0 = none): 1 up to 80 % of the tightest
/// ceiling, then falling linearly to 0.02 at 100 % and beyond.
pub fn headroom_factor(load: &Load, ceilings: [u32; 4]) -> f64 {
    let used = [
        load.model_rpm,
        load.model_tpm,
        load.provider_rpm,
        load.provider_tpm,
    ];
    let mut f: f64 = 1.0;
    for (u, c) in used.into_iter().zip(ceilings) {
        if c == 0 {
            continue;
        }
        let frac = u / f64::from(c);
        if frac > 0.8 {
            f = f.min(((1.0 - frac) / 0.2).max(0.02));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_falls_near_the_tightest_ceiling() {
        let load = |rpm| Load {
            model_rpm: rpm,
            ..Load::default()
        };
        assert_eq!(headroom_factor(&load(10.0), [0, 0, 0, 0]), 1.0);
        assert_eq!(headroom_factor(&load(20.0), [30, 0, 0, 0]), 1.0);
        assert!((headroom_factor(&load(27.0), [30, 0, 0, 0]) - 0.5).abs() < 1e-9);
        assert_eq!(headroom_factor(&load(40.0), [30, 0, 0, 0]), 0.02);
        let both = Load {
            model_rpm: 1.0,
            provider_tpm: 950.0,
            ..Load::default()
        };
        assert!((headroom_factor(&both, [30, 0, 0, 1000]) - 0.25).abs() < 1e-9);
    }
}
