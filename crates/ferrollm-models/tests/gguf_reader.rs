//! GGUF reader: metadata types, tensor layout, error cases, and a mutation fuzz that must
//! never panic or hang.

mod common;

use std::time::{Duration, Instant};

use ferrollm_kernels::DType;
use ferrollm_models::gguf::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use ferrollm_models::{ModelError, WeightSource};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A small file touching every metadata type, nested arrays, two loadable tensors and one of a
/// type we cannot load.
fn sample(alignment: Option<u32>) -> GgufWriter {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.alignment(a);
    }
    w.add_str("general.architecture", "llama")
        .add("u8", MetadataValue::U8(200))
        .add("i8", MetadataValue::I8(-100))
        .add("u16", MetadataValue::U16(60000))
        .add("i16", MetadataValue::I16(-30000))
        .add_u32("u32", 4_000_000_000)
        .add("i32", MetadataValue::I32(-2_000_000_000))
        .add("u64", MetadataValue::U64(u64::MAX))
        .add("i64", MetadataValue::I64(i64::MIN))
        .add_f32("f32", 1.5)
        .add("f64", MetadataValue::F64(0.25))
        .add_bool("bool", true)
        .add_str("str", "héllo")
        .add_str_array("strs", &["a", "", "ccc"])
        .add("i32s", MetadataValue::Array(MetadataArray::I32(vec![1, -2, 3])))
        .add("f32s", MetadataValue::Array(MetadataArray::F32(vec![0.5, 1.0])))
        .add("bools", MetadataValue::Array(MetadataArray::Bool(vec![true, false])))
        .add(
            "nested",
            MetadataValue::Array(MetadataArray::Array(vec![
                MetadataArray::U8(vec![1, 2]),
                MetadataArray::String(vec!["x".into()]),
                MetadataArray::Array(vec![MetadataArray::I64(vec![-1])]),
            ])),
        );
    let w32: Vec<f32> = (0..6).map(|i| i as f32).collect();
    w.add_f32_tensor("weight", &[2, 3], &w32);
    // One Q8_0 row of 32 weights: f16 scale + 32 i8.
    let mut q = vec![0u8; 34];
    q[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    for (i, b) in q[2..].iter_mut().enumerate() {
        *b = i as u8;
    }
    w.add_tensor("q8", &[1, 32], 8, q);
    w.add_f32_tensor("norm", &[3], &[1.0, 2.0, 3.0]);
    // IQ2_XXS (16): parsed and listed, but not loadable.
    w.add_tensor("iq", &[256], 16, vec![0u8; 66]);
    w
}

#[test]
fn reads_all_metadata_types() {
    let g = GgufFile::from_bytes(sample(None).to_bytes()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get("u8"), Some(&MetadataValue::U8(200)));
    assert_eq!(g.get_u32("u8").unwrap(), Some(200));
    assert_eq!(g.get_i32("i8").unwrap(), Some(-100));
    assert_eq!(g.get_u32("u16").unwrap(), Some(60000));
    assert_eq!(g.get_i32("i16").unwrap(), Some(-30000));
    assert_eq!(g.get_u32("u32").unwrap(), Some(4_000_000_000));
    assert_eq!(g.get_i32("i32").unwrap(), Some(-2_000_000_000));
    assert_eq!(g.get_u64("u64").unwrap(), Some(u64::MAX));
    assert_eq!(g.get_i64("i64").unwrap(), Some(i64::MIN));
    assert_eq!(g.get_f32("f32").unwrap(), Some(1.5));
    assert_eq!(g.get_f32("f64").unwrap(), Some(0.25));
    assert_eq!(g.get_bool("bool").unwrap(), Some(true));
    assert_eq!(g.get_str("str").unwrap(), Some("héllo"));
    assert_eq!(g.get_str_array("strs").unwrap().unwrap(), &["a", "", "ccc"]);
    assert_eq!(g.get_i32_array("i32s").unwrap(), Some(vec![1, -2, 3]));
    assert_eq!(g.get_f32_array("f32s").unwrap().unwrap(), &[0.5, 1.0]);
    assert_eq!(g.get_array("bools").unwrap().unwrap(), &MetadataArray::Bool(vec![true, false]));
    match g.get_array("nested").unwrap().unwrap() {
        MetadataArray::Array(inner) => {
            assert_eq!(inner.len(), 3);
            assert_eq!(inner[2], MetadataArray::Array(vec![MetadataArray::I64(vec![-1])]));
        }
        other => panic!("nested parsed as {other:?}"),
    }
    // Missing keys are Ok(None); required ones name the key.
    assert_eq!(g.get_u32("nope").unwrap(), None);
    let err = g.require_u32("nope").unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    // Wrong types and out-of-range integers are errors naming the key.
    let err = g.get_u32("str").unwrap_err().to_string();
    assert!(err.contains("'str'") && err.contains("string"), "{err}");
    assert!(g.get_u32("u64").is_err());
    assert!(g.get_u32("i8").is_err());
    assert!(g.get_str_array("i32s").is_err());
    // File order is preserved.
    let keys: Vec<&str> = g.metadata().map(|(k, _)| k).take(3).collect();
    assert_eq!(keys, ["general.architecture", "u8", "i8"]);
}

#[test]
fn tensors_are_row_major_views() {
    for alignment in [None, Some(64), Some(1)] {
        let g = GgufFile::from_bytes(sample(alignment).to_bytes()).unwrap();
        assert_eq!(g.alignment(), alignment.unwrap_or(32) as usize);
        assert_eq!(g.data_offset() % g.alignment(), 0);
        let info = g.tensor_info("weight").unwrap();
        assert_eq!(info.dims, vec![3, 2], "GGUF order is ne0 first");
        assert_eq!(info.shape, vec![2, 3]);
        let t = g.tensor("weight").unwrap();
        assert_eq!(t.dtype, DType::F32);
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.to_f32().unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let q = g.tensor("q8").unwrap();
        assert_eq!((q.dtype, q.shape.clone(), q.bytes.len()), (DType::Q8_0, vec![1, 32], 34));
        let deq = q.to_f32().unwrap();
        assert_eq!(deq[3], 1.5);
        assert_eq!(g.tensor("norm").unwrap().to_f32().unwrap(), vec![1.0, 2.0, 3.0]);
        assert!(g.has("iq") && !g.has("missing"));
        match g.tensor("iq") {
            Err(ModelError::UnsupportedTensorType { name, dtype }) => {
                assert_eq!((name.as_str(), dtype.as_str()), ("iq", "IQ2_XXS"))
            }
            other => panic!("expected UnsupportedTensorType, got {other:?}"),
        }
        assert!(matches!(g.tensor("missing"), Err(ModelError::MissingTensor(n)) if n == "missing"));
    }
}

#[test]
fn opens_files_and_reports_io_errors() {
    let dir = common::temp_dir("gguf-open");
    let path = dir.join("m.gguf");
    sample(None).write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensor("weight").unwrap().to_f32().unwrap()[5], 5.0);
    assert_eq!(g.path(), path.display().to_string());

    let err = GgufFile::open(dir.join("absent.gguf")).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
    std::fs::write(dir.join("empty.gguf"), b"").unwrap();
    let err = GgufFile::open(dir.join("empty.gguf")).unwrap_err().to_string();
    assert!(err.contains("too short"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

fn expect_bad(bytes: Vec<u8>, needle: &str) {
    match GgufFile::from_bytes(bytes) {
        Err(ModelError::BadGguf { reason, .. }) => assert!(reason.contains(needle), "'{reason}' lacks '{needle}'"),
        other => panic!("expected BadGguf containing '{needle}', got {other:?}"),
    }
}

#[test]
fn rejects_malformed_headers() {
    let good = sample(None).to_bytes();

    let mut b = good.clone();
    b[0] = b'X';
    expect_bad(b, "magic");

    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    expect_bad(b, "version 1");

    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    expect_bad(b, "big-endian");

    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_bad(b, "metadata count");

    // Truncating anywhere in the header or data is an error, not a panic.
    let g = GgufFile::from_bytes(good.clone()).unwrap();
    for cut in [0, 3, 10, 30, g.data_offset() - 1, good.len() - 1] {
        assert!(GgufFile::from_bytes(good[..cut].to_vec()).is_err(), "cut at {cut}");
    }

    // Tensor data past the end of the file.
    let mut w = GgufWriter::new();
    w.add_tensor("t", &[4], 0, vec![0u8; 8]);
    expect_bad(w.to_bytes(), "outside");

    // Duplicate keys and tensor names.
    let mut w = GgufWriter::new();
    w.add_u32("k", 1).add_u32("k", 2);
    expect_bad(w.to_bytes(), "duplicate metadata key 'k'");
    let mut w = GgufWriter::new();
    w.add_f32_tensor("t", &[1], &[0.0]).add_f32_tensor("t", &[1], &[0.0]);
    expect_bad(w.to_bytes(), "duplicate tensor name 't'");

    // Bad alignment value.
    let mut w = GgufWriter::new();
    w.add_u32("general.alignment", 3);
    expect_bad(w.to_bytes(), "power of two");

    // Unknown tensor type ids are rejected like llama.cpp does.
    let mut w = GgufWriter::new();
    w.add_tensor("t", &[4], 5, vec![0u8; 8]);
    expect_bad(w.to_bytes(), "unknown ggml type id 5");

    // A Q8_0 row that is not a whole number of blocks.
    let mut w = GgufWriter::new();
    w.add_tensor("q", &[31], 8, vec![0u8; 34]);
    expect_bad(w.to_bytes(), "block size");

    // Nesting deeper than any real file.
    let mut deep = MetadataArray::U8(vec![]);
    for _ in 0..20 {
        deep = MetadataArray::Array(vec![deep]);
    }
    let mut w = GgufWriter::new();
    w.add("deep", MetadataValue::Array(deep));
    expect_bad(w.to_bytes(), "nested");

    // Unknown metadata type id.
    let mut w = GgufWriter::new();
    w.add_u32("x", 7);
    let mut b = w.to_bytes();
    let type_pos = 24 + 8 + 1;
    b[type_pos..type_pos + 4].copy_from_slice(&99u32.to_le_bytes());
    expect_bad(b, "unknown metadata value type 99");
}

#[test]
fn version_2_files_parse() {
    let mut w = sample(None);
    w.version(2);
    let g = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(g.version(), 2);
    assert_eq!(g.tensor("weight").unwrap().shape, vec![2, 3]);
}

/// One random corruption: flipped bytes, a forged u64 count/length, or a truncation.
fn mutate(rng: &mut StdRng, base: &[u8], header_len: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    // Aim most mutations at the header, where the parser lives.
    let span = header_len.clamp(1, b.len());
    match rng.gen_range(0..5) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..span);
                b[i] = rng.gen();
            }
        }
        1 => {
            let i = rng.gen_range(0..span);
            let v: u64 = match rng.gen_range(0..4) {
                0 => u64::MAX,
                1 => rng.gen_range(0..1 << 20),
                2 => 1 << rng.gen_range(0..64),
                _ => rng.gen(),
            };
            let end = (i + 8).min(b.len());
            b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
        }
        2 => b.truncate(rng.gen_range(0..b.len())),
        3 => {
            let i = rng.gen_range(0..span);
            b[i] ^= 1 << rng.gen_range(0..8);
            b.truncate(rng.gen_range(i..b.len()).max(1));
        }
        _ => {
            let i = rng.gen_range(0..span);
            let v: u32 = rng.gen_range(0..40);
            let end = (i + 4).min(b.len());
            b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
        }
    }
    b
}

/// Opening must return Ok or Err: no panic, no hang, no runaway allocation. When it opens,
/// every listed tensor must be retrievable or fail cleanly.
fn fuzz(base: &[u8], header_len: usize, iterations: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut ok = 0;
    for _ in 0..iterations {
        let b = mutate(&mut rng, base, header_len);
        let t0 = Instant::now();
        if let Ok(g) = GgufFile::from_bytes(b) {
            ok += 1;
            for info in g.tensors().to_vec() {
                if let Ok(t) = g.tensor(&info.name) {
                    let _ = t.into_matrix();
                }
            }
            let _ = ferrollm_models::ModelConfig::from_gguf(&g);
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "one parse took {:?}", t0.elapsed());
    }
    eprintln!("fuzz: {iterations} mutations, {ok} still opened, {:?}", start.elapsed());
}

#[test]
fn fuzz_small_file_never_panics() {
    let base = sample(Some(64)).to_bytes();
    let header_len = GgufFile::from_bytes(base.clone()).unwrap().data_offset();
    fuzz(&base, header_len, 20_000, 0x5eed);
}

#[test]
fn fuzz_smollm2_header_never_panics() {
    // The real header (metadata with a 49k-token vocabulary and 272 tensor infos), without the
    // tensor data, so mutations hit a realistic layout.
    let path = common::model(common::SMOLLM2);
    let g = GgufFile::open(&path).unwrap();
    let header_len = g.data_offset();
    let bytes = std::fs::read(&path).unwrap();
    let base = bytes[..header_len].to_vec();
    drop(bytes);
    fuzz(&base, header_len, 400, 0xbeef);
}

#[test]
fn fuzz_smollm2_tokenizer_metadata_never_panics() {
    // The real header with its tensor count zeroed, so mutated copies still open and the
    // config and tokenizer builders see corrupted vocabularies, merges and ids.
    let path = common::model(common::SMOLLM2);
    let header_len = GgufFile::open(&path).unwrap().data_offset();
    let bytes = std::fs::read(&path).unwrap();
    let mut base = bytes[..header_len].to_vec();
    drop(bytes);
    base[8..16].copy_from_slice(&0u64.to_le_bytes());
    let g = GgufFile::from_bytes(base.clone()).unwrap();
    assert!(ferrollm_models::Tokenizer::from_gguf(&g).is_ok());

    let mut rng = StdRng::seed_from_u64(0x70c);
    let mut built = 0;
    for _ in 0..40 {
        let b = mutate(&mut rng, &base, header_len);
        if let Ok(g) = GgufFile::from_bytes(b) {
            let _ = ferrollm_models::ModelConfig::from_gguf(&g);
            if let Ok(tok) = ferrollm_models::Tokenizer::from_gguf(&g) {
                built += 1;
                let ids = tok.encode("Hello <|im_start|> wörld 123", true).unwrap_or_default();
                let _ = tok.decode(&ids, false);
                let _ = tok.decode(&ids, true);
            }
        }
    }
    eprintln!("tokenizer fuzz: {built} of 40 mutated vocabularies built");
}
