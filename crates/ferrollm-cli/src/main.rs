//! `ferrollm`: serve, generate, bench, fetch and cut-layers.

mod bench;
mod cli_args;
mod fetch;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferrollm_engine::{ChatMessage, Engine, SamplingParams, LLM};

use cli_args::EngineFlags;

#[derive(Parser)]
#[command(name = "ferrollm", version, about = "LLM inference and serving engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve {
        /// GGUF file, Hugging Face directory, or known model name (default: SmolLM2-135M-Instruct).
        model: Option<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Require `Authorization: Bearer KEY`.
        #[arg(long, env = "FERROLLM_API_KEY")]
        api_key: Option<String>,
        #[command(flatten)]
        engine: EngineFlags,
    },
    /// Generate text for one prompt.
    Generate {
        /// GGUF file, Hugging Face directory, or known model name (default: SmolLM2-135M-Instruct).
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 for greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        top_k: i32,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 1)]
        n: usize,
        #[arg(long)]
        stop: Vec<String>,
        #[command(flatten)]
        engine: EngineFlags,
    },
    /// Benchmarks, like `vllm bench`.
    Bench {
        #[command(subcommand)]
        kind: bench::BenchKind,
    },
    /// Write a GGUF model's first N transformer blocks (with its embeddings, final norm, head
    /// and tokenizer) as a new GGUF: a draft model with the same vocabulary for
    /// `--speculative-config '{"method":"draft_model",...}'`.
    CutLayers {
        /// GGUF file to cut.
        input: std::path::PathBuf,
        /// Where to write the cut model.
        output: std::path::PathBuf,
        /// Blocks to keep (the first N).
        #[arg(long)]
        keep: usize,
    },
    /// Download a known model into the cache (default: SmolLM2-135M-Instruct).
    Fetch {
        /// smollm2-135m-instruct or qwen2.5-coder-0.5b-instruct.
        name: Option<String>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fetch { name } => {
            let name = name.unwrap_or_else(|| fetch::DEFAULT_MODEL.to_string());
            let m = fetch::find(&name).with_context(|| {
                let names: Vec<&str> = fetch::KNOWN_MODELS.iter().map(|m| m.name).collect();
                format!("unknown model '{name}'; known: {}", names.join(", "))
            })?;
            println!("{}", fetch::ensure(m)?.display());
            Ok(())
        }
        Command::Generate { model, prompt, chat, max_tokens, temperature, top_p, top_k, seed, n, stop, engine } => {
            let path = fetch::resolve_model(model.as_deref())?;
            let llm = LLM::new(engine.to_engine_args(path)?)?;
            let params = SamplingParams {
                n,
                temperature,
                top_p,
                top_k,
                seed,
                stop,
                max_tokens: Some(max_tokens),
                ..Default::default()
            };
            let outs = if chat {
                llm.chat(&[vec![ChatMessage::new("user", prompt)]], &params)?
            } else {
                llm.generate(&[prompt.as_str()], &params)?
            };
            for o in &outs {
                for c in &o.outputs {
                    if o.outputs.len() > 1 {
                        println!("--- completion {} ---", c.index);
                    }
                    println!("{}", c.text);
                }
            }
            Ok(())
        }
        Command::Serve { model, host, port, api_key, engine } => {
            let path = fetch::resolve_model(model.as_deref())?;
            let args = engine.to_engine_args(path.clone())?;
            let served = args.served_model_name.clone().unwrap_or_else(|| {
                model
                    .clone()
                    .unwrap_or_else(|| path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
            });
            let mut args = args;
            args.served_model_name = Some(served.clone());
            let engine = Engine::new(args)?;
            engine.warm_up_structured_outputs();
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(ferrollm_server::serve(
                engine,
                ferrollm_server::ServerConfig { host, port, api_key, served_model_name: served },
            ))
        }
        Command::Bench { kind } => bench::run(kind),
        Command::CutLayers { input, output, keep } => {
            let s = ferrollm_models::gguf::cut_layers(&input, &output, keep)?;
            println!(
                "{}: {} of {} {} blocks kept, {} tensors written ({:.1} MB), {} dropped",
                output.display(),
                s.blocks_after,
                s.blocks_before,
                s.architecture,
                s.tensors_kept,
                s.bytes_written as f64 / 1e6,
                s.tensors_dropped
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_layers_arguments() {
        let cli = Cli::try_parse_from(["ferrollm", "cut-layers", "in.gguf", "out.gguf", "--keep", "8"]).unwrap();
        match cli.command {
            Command::CutLayers { input, output, keep } => {
                assert_eq!((input.to_str(), output.to_str(), keep), (Some("in.gguf"), Some("out.gguf"), 8));
            }
            _ => panic!("parsed as another command"),
        }
        let err = Cli::try_parse_from(["ferrollm", "cut-layers", "in.gguf", "out.gguf"]).err().unwrap().to_string();
        assert!(err.contains("--keep"), "{err}");
        let err =
            Cli::try_parse_from(["ferrollm", "cut-layers", "a", "b", "--keep", "many"]).err().unwrap().to_string();
        assert!(err.contains("many"), "{err}");
    }

    #[test]
    fn cut_layers_reports_bad_input() {
        let dir = std::env::temp_dir().join(format!("ferrollm-cli-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.gguf");
        std::fs::write(&bad, b"GGUF but not really a model file, too short").unwrap();
        let cli = Cli::try_parse_from([
            "ferrollm".as_ref(),
            "cut-layers".as_ref(),
            bad.as_os_str(),
            dir.join("out.gguf").as_os_str(),
            "--keep".as_ref(),
            "2".as_ref(),
        ])
        .unwrap();
        let err = format!("{:#}", run(cli).unwrap_err());
        assert!(err.contains("bad.gguf") && err.contains("not a valid GGUF"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
