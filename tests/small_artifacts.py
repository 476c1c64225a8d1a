"""A small MMoE artifact for tests that serve a real model: trains in seconds, keeps the default ranker's
structure (user tower, behaviour sequence + target attention, MMoE over a user/candidate concat)."""

from pathlib import Path

from service.training.train import TrainSettings, save_trained, train_model

SMALL_MMOE = {
    "user_vocab": 100, "item_vocab": 300, "author_vocab": 50, "category_vocab": 20,
    "profile_fields": (("user_gender", 3), ("user_city", 20)),
    "user_id_dim": 8, "profile_dim": 4, "user_dense_dim": 6, "user_mlp_dims": (16, 8), "seq_len": 8,
    "item_dim": 8, "author_dim": 4, "category_dim": 4, "item_dense_dim": 5, "cross_dense_dim": 3,
    "attention_dim": 8, "num_experts": 2, "expert_dims": (32, 16), "tower_dims": (8,),
}
# train_model, not train_and_save: these settings shrink the 16k-row holdout evaluation.
QUICK_TRAINING = TrainSettings(steps=3, batch_size=64, holdout_rows=512, eval_batch_size=512)


def save_small_mmoe(store: Path, name: str, version: str = "v1", seed: int = 0) -> Path:
    trained = train_model("mmoe", seed=seed, config_overrides=SMALL_MMOE, settings=QUICK_TRAINING)
    return save_trained(trained, "mmoe", store, name, version, seed)
