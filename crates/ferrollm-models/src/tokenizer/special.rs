//! Which tokens end generation, following llama.cpp's `llama_vocab::impl::load`.
//!
//! GGUF files name only BOS/EOS (and sometimes EOT/EOM) explicitly; llama.cpp finds the other
//! end-of-generation tokens by their text. We reproduce that list so a chat model stops on
//! `<|im_end|>` even when its EOS is `<|endoftext|>`.

/// Texts llama.cpp treats as end-of-generation (and forces to control type).
pub(crate) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// FIM padding/repo/separator tokens; llama.cpp adds these to the end-of-generation set too.
pub(crate) const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// Other texts llama.cpp recognises (EOT and FIM prefix/suffix/middle) and marks as control
/// tokens, so they are parsed as special and hidden when decoding with special tokens skipped.
pub(crate) const CONTROL_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];

/// gpt-oss/solar-open: with `<|return|>` and `<|call|>` (or `<|calls|>` and `<|flush|>`)
/// present, `<|end|>` only ends a message, not the generation.
pub(crate) fn drop_end_if_harmony(eog: &mut Vec<u32>, text_of: impl Fn(u32) -> Option<String>) {
    let has = |t: &str| eog.iter().any(|&id| text_of(id).as_deref() == Some(t));
    let harmony = (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>"));
    if harmony {
        eog.retain(|&id| text_of(id).as_deref() != Some("<|end|>"));
    }
}
