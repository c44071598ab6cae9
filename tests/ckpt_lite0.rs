//! The real EfficientNet-Lite0 weights (legacy torch.save format), when `ADJQ_LITE0` names
//! the .pth that `scripts/fetch_lite0.sh DIR` downloads; skipped otherwise, since it needs
//! the network. Expected numbers are from torch 2.15 (`torch.load`, sums in float64).

use std::path::Path;

use adjq::ckpt::{self, DType, Format};

#[test]
fn lite0_state_dict_matches_torch() {
    let Some(path) = std::env::var_os("ADJQ_LITE0") else {
        eprintln!("skipped: set ADJQ_LITE0 to the path scripts/fetch_lite0.sh prints");
        return;
    };
    let path = Path::new(&path);
    assert_eq!(ckpt::detect_format(path).unwrap(), Format::PyTorch);
    let map = ckpt::read(path, Format::PyTorch).unwrap();
    assert_eq!(map.len(), 296);
    let floats: usize = map
        .values()
        .filter(|t| t.dtype.is_float())
        .map(|t| t.numel())
        .sum();
    assert_eq!(floats, 4_694_024);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    for (name, shape, sum, first) in [
        (
            "_conv_stem.weight",
            &[32, 3, 3, 3][..],
            -26.811376610887237,
            [-1.1103360652923584, -1.3087704181671143],
        ),
        (
            "_bn0.running_var",
            &[32][..],
            214.57079964876175,
            [1.631428599357605, 70.37157440185547],
        ),
        (
            "_fc.weight",
            &[1000, 1280][..],
            -470.63256730128705,
            [-0.04561043530702591, -0.09470871090888977],
        ),
    ] {
        let t = &map[name];
        assert_eq!((t.dtype, t.shape.as_slice()), (DType::F32, shape), "{name}");
        let v = t.to_f64_vec().unwrap();
        let s: f64 = v.iter().sum();
        assert!(close(s, sum), "{name}: sum {s} vs {sum}");
        assert_eq!(&v[..2], &first, "{name}");
    }
    assert_eq!(map["_bn0.num_batches_tracked"].to_i64_vec().unwrap(), [0]);
}
