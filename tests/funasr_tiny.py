"""Tiny randomly initialised model folders of FunASR's real classes (for tests; nothing is downloaded).

An emotion2vec folder is what FunASR's AutoModel loads offline: `config.yaml` (model class, tokenizer
and a tiny `model_conf`), `model.pt` (the real `Emotion2vec` class's state_dict, ~34k parameters) and
`tokens.txt` (one label a line, as in the emotion2vec+ snapshots).
"""

from __future__ import annotations

from pathlib import Path

import yaml

# emotion2vec+ base/large tokens.txt order (modelscope iic/emotion2vec_plus_*).
PLUS_LABELS = ("生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral", "其他/other",
               "难过/sad", "吃惊/surprised", "<unk>")  # fmt: skip

_AUDIO = {
    "type": "AUDIO", "prenet_depth": 1, "prenet_layerdrop": 0.0, "prenet_dropout": 0.0,
    "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": 0, "init_extra_token_zero": True,
    "mask_noise_std": 0.01, "mask_prob_min": None, "mask_prob": 0.0, "inverse_mask": False, "mask_prob_adjust": 0.0,
    "keep_masked_pct": 0.0, "mask_length": 5, "add_masks": False, "remove_masks": False, "mask_dropout": 0.0,
    "encoder_zero_mask": True, "mask_channel_prob": 0.0, "mask_channel_length": 64, "ema_local_encoder": False,
    "local_grad_mult": 1.0, "use_alibi_encoder": False, "alibi_scale": 1.0, "learned_alibi": False,
    "alibi_max_pos": None, "learned_alibi_scale": False, "learned_alibi_scale_per_head": False,
    "learned_alibi_scale_per_layer": False, "num_alibi_heads": 2, "model_depth": 1, "decoder": None,
    "extractor_mode": "layer_norm", "feature_encoder_spec": "[(32, 10, 5)] + [(32, 3, 2)] * 2",
    "conv_pos_width": 9, "conv_pos_groups": 1, "conv_pos_depth": 1, "conv_pos_pre_ln": False,
}  # fmt: skip
_MODEL = {
    "loss_beta": 0.0, "loss_scale": None, "depth": 1, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0,
    "num_heads": 2, "norm_eps": 1e-5, "norm_affine": True, "encoder_dropout": 0.0, "post_mlp_drop": 0.0,
    "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0, "layer_norm_first": False,
    "end_of_block_targets": False, "average_top_k_layers": 1, "embed_dim": 32, "mlp_ratio": 2.0,
    "normalize": True, "clone_batch": 1, "modalities": {"audio": _AUDIO},
}  # fmt: skip


def emotion2vec_folder(folder: Path, labels: tuple[str, ...] = PLUS_LABELS, favour: str | None = None) -> Path:
    """Write a tiny emotion2vec model folder; `favour` makes that label win on any input (a large bias)."""
    import torch
    from funasr.models.emotion2vec.model import Emotion2vec

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": "Emotion2vec", "model_conf": _MODEL, "tokenizer": "CharTokenizer",
              "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    (folder / "tokens.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    state = Emotion2vec(model_conf=_MODEL, vocab_size=len(labels)).state_dict()
    if favour is not None:
        state["proj.bias"][labels.index(favour)] = 50.0
    torch.save(state, folder / "model.pt")
    return folder
