"""Rankers built from torchrec's own modules, each behind the thin adapter a torchrec user writes to serve it.

The service calls a model with a dict of named feature tensors: user features at batch 1, candidate features
at batch N (the engine tiles the user ones to N before the adapter sees them). A torchrec model wants a
KeyedJaggedTensor, so the adapter packs each key's ids into one values tensor with per-sample lengths built
from the batch size, the way torchrec's own examples do (`from_lengths_sync`, or the constructor).

    dlrm      torchrec.models.dlrm.DLRM (EmbeddingBagCollection, dense arch, pairwise dot interaction)
    deepfm    torchrec.models.deepfm.SimpleDeepFMNN (EmbeddingBagCollection, DeepFM + FM interaction)
    ebc_mlp   EmbeddingBagCollection with one id per sample and a mean-pooled bag of L recent categories
              per user, then an MLP over user and item embeddings and dense features
    multi_hot EmbeddingBagCollection over single ids and a candidate's variable-length tag bag, whose
              lengths are read from the data (`tags != 0`): only that key stays jagged
    ec_seq    EmbeddingCollection (unpooled sequence embeddings): the user's history as a padded dense
              sequence (`to_padded_dense`), target attention over it, then an MLP; `ec_seq_longest` pads
              to the longest length (torchrec's default), a size read back from the data
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchrec
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.models.deepfm import SimpleDeepFMNN
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import PoolingType


@dataclass(frozen=True)
class Feature:
    """One input of the service call. Shape is per row (the batch dimension is added by the tests)."""

    name: str
    user: bool
    shape: tuple[int, ...] = ()
    vocab: int = 0  # > 0: int64 ids in [0, vocab); 0: float32 dense values
    padded: bool = False  # ids in [1, vocab), a random number of trailing slots (maybe all) set to 0: empty


@dataclass(frozen=True)
class TorchrecCase:
    name: str
    build: Callable[[], nn.Module]
    features: tuple[Feature, ...]
    user_lookups: dict[str, int]  # user id feature -> ids it looks up per request (UOI/MaRI: once, at batch 1)

    @property
    def user_inputs(self) -> list[str]:
        return [f.name for f in self.features if f.user]

    def random_inputs(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        values = {}
        for f in self.features:
            rows = 1 if f.user else n
            if f.padded:
                ids = torch.randint(1, f.vocab, (rows, *f.shape), generator=generator)
                used = torch.randint(0, f.shape[-1] + 1, (rows, 1), generator=generator)
                values[f.name] = ids.masked_fill(torch.arange(f.shape[-1]) >= used, 0)
            elif f.vocab:
                values[f.name] = torch.randint(0, f.vocab, (rows, *f.shape), generator=generator)
            else:
                values[f.name] = torch.randn(rows, *f.shape, generator=generator)
        return values

    def tiled(self, values: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """What the model sees in VanI serving: every user feature repeated to n rows."""
        user = set(self.user_inputs)
        return {k: v.expand(n, *v.shape[1:]).contiguous() if k in user else v for k, v in values.items()}


def _single_id_kjt(features: dict[str, Tensor], keys: list[str]) -> KeyedJaggedTensor:
    """One id per sample and key: what a torchrec user writes for categorical features."""
    ids = [features[k] for k in keys]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.cat(ids), lengths=torch.cat([torch.ones_like(i) for i in ids])
    )


def _table_per_key(vocab: tuple[tuple[str, int], ...], dim: int) -> list[EmbeddingBagConfig]:
    """One pooled table `t_<key>` per sparse key, as torchrec's DLRM and DeepFM examples declare them."""
    return [EmbeddingBagConfig(name=f"t_{k}", embedding_dim=dim, num_embeddings=v, feature_names=[k]) for k, v in vocab]


# -- DLRM ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlrmConfig:
    vocab: tuple[tuple[str, int], ...] = (("user_id", 5000), ("user_city", 300), ("item_id", 20000), ("item_cat", 200))
    embedding_dim: int = 16
    user_dense: int = 6
    item_dense: int = 7
    dense_arch: tuple[int, ...] = (64, 16)
    over_arch: tuple[int, ...] = (64, 32, 1)


class DlrmRanker(nn.Module):
    """torchrec's DLRM behind the serving adapter: dense = user|item dense, sparse = one id per key."""

    def __init__(self, config: DlrmConfig = DlrmConfig()) -> None:
        super().__init__()
        self.keys = [k for k, _ in config.vocab]
        self.dlrm = DLRM(
            embedding_bag_collection=EmbeddingBagCollection(tables=_table_per_key(config.vocab, config.embedding_dim)),
            dense_in_features=config.user_dense + config.item_dense,
            dense_arch_layer_sizes=list(config.dense_arch),
            over_arch_layer_sizes=list(config.over_arch),
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        dense = torch.cat([features["user_dense"], features["item_dense"]], dim=1)
        logits = self.dlrm(dense, _single_id_kjt(features, self.keys))
        return torch.sigmoid(logits).squeeze(-1)


# -- DeepFM -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeepFmConfig:
    vocab: tuple[tuple[str, int], ...] = (("user_id", 5000), ("user_age", 10), ("item_id", 20000), ("item_brand", 500))
    embedding_dim: int = 8
    user_dense: int = 4
    item_dense: int = 5
    hidden: int = 32
    deep_fm_dimension: int = 16


class DeepFmRanker(nn.Module):
    """torchrec's SimpleDeepFMNN; the KJT is built with the constructor and lengths from the batch size."""

    def __init__(self, config: DeepFmConfig = DeepFmConfig()) -> None:
        super().__init__()
        self.keys = [k for k, _ in config.vocab]
        self.deepfm = SimpleDeepFMNN(
            num_dense_features=config.user_dense + config.item_dense,
            embedding_bag_collection=EmbeddingBagCollection(tables=_table_per_key(config.vocab, config.embedding_dim)),
            hidden_layer_size=config.hidden,
            deep_fm_dimension=config.deep_fm_dimension,
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        n = features["item_id"].size(0)
        kjt = KeyedJaggedTensor(
            keys=self.keys,
            values=torch.cat([features[k] for k in self.keys]),
            lengths=torch.ones(len(self.keys) * n, dtype=torch.int64),
        )
        dense = torch.cat([features["user_dense"], features["item_dense"]], dim=1)
        return self.deepfm(dense, kjt).squeeze(-1)  # SimpleDeepFMNN ends in a sigmoid


# -- EmbeddingBagCollection with a pooled bag per user ------------------------------------------------


@dataclass(frozen=True)
class EbcMlpConfig:
    user_vocab: int = 5000
    category_vocab: int = 300
    item_vocab: int = 20000
    recent: int = 4  # recent categories per user, one mean-pooled bag
    embedding_dim: int = 16
    user_dense: int = 8
    item_dense: int = 6
    hidden: tuple[int, ...] = (128, 64)


class EbcMlpRanker(nn.Module):
    """EmbeddingBagCollection (sum and mean pooling, bags of 1 and of `recent` ids) feeding an MLP."""

    def __init__(self, config: EbcMlpConfig = EbcMlpConfig()) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name="user_table", embedding_dim=d, num_embeddings=config.user_vocab, feature_names=["user_id"]
                ),
                EmbeddingBagConfig(
                    name="category_table",
                    embedding_dim=d,
                    num_embeddings=config.category_vocab,
                    feature_names=["user_recent_cats", "item_cat"],
                    pooling=PoolingType.MEAN,
                ),
                EmbeddingBagConfig(
                    name="item_table", embedding_dim=d, num_embeddings=config.item_vocab, feature_names=["item_id"]
                ),
            ]
        )
        widths = (4 * d + config.user_dense + config.item_dense, *config.hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        n = features["item_id"].size(0)
        recent = self.config.recent
        keys = ["user_id", "user_recent_cats", "item_id", "item_cat"]
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys,
            values=torch.cat(
                [
                    features["user_id"],
                    features["user_recent_cats"].reshape(-1),
                    features["item_id"],
                    features["item_cat"],
                ]
            ),
            lengths=torch.cat(
                [torch.ones(n, dtype=torch.int64), torch.full((n,), recent), torch.ones(2 * n, dtype=torch.int64)]
            ),
        )
        pooled = self.ebc(kjt).to_dict()
        x = torch.cat([pooled[k] for k in keys] + [features["user_dense"], features["item_dense"]], dim=1)
        return torch.sigmoid(self.mlp(x)).squeeze(-1)


# -- multi-hot candidate tags: lengths read from the data --------------------------------------------


@dataclass(frozen=True)
class MultiHotConfig:
    user_vocab: int = 5000
    item_vocab: int = 20000
    tag_vocab: int = 1000
    tag_slots: int = 5  # tags per item, 0 = empty slot
    embedding_dim: int = 16
    user_dense: int = 8
    hidden: tuple[int, ...] = (64, 32)


class MultiHotRanker(nn.Module):
    """One KJT for single ids and a variable-length tag bag: the tags' lengths come from the data
    (`tags != 0`), the other keys' from the batch size."""

    def __init__(self, config: MultiHotConfig = MultiHotConfig()) -> None:
        super().__init__()
        d = config.embedding_dim
        self.keys = ["user_id", "item_id", "item_tags"]
        vocab = {"user_id": config.user_vocab, "item_id": config.item_vocab, "item_tags": config.tag_vocab}
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(name=f"t_{k}", embedding_dim=d, num_embeddings=vocab[k], feature_names=[k])
                for k in self.keys
            ]
        )
        widths = (3 * d + config.user_dense, *config.hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        n = features["item_id"].size(0)
        tags = features["item_tags"]
        present = tags != 0
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=torch.cat([features["user_id"], features["item_id"], tags[present]]),
            lengths=torch.cat([torch.ones(2 * n, dtype=torch.int64), present.sum(1)]),
        )
        x = torch.cat([self.ebc(kjt).values(), features["user_dense"]], dim=1)
        return torch.sigmoid(self.mlp(x)).squeeze(-1)


# -- EmbeddingCollection: a user's history as a sequence ----------------------------------------------


@dataclass(frozen=True)
class EcSeqConfig:
    item_vocab: int = 20000
    history: int = 20
    embedding_dim: int = 16
    user_dense: int = 8
    hidden: int = 64
    pad_to_history: bool = True  # to_padded_dense(history); False: torchrec's default, the longest length


class EcSequenceRanker(nn.Module):
    """EmbeddingCollection shared by the user's history and the candidate; target attention + MLP."""

    def __init__(self, config: EcSeqConfig = EcSeqConfig()) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name="item_table",
                    embedding_dim=d,
                    num_embeddings=config.item_vocab,
                    feature_names=["user_history", "item_id"],
                )
            ]
        )
        self.user_tower = nn.Sequential(nn.Linear(config.user_dense, d), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(4 * d, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        history, item = features["user_history"], features["item_id"]
        n, length = item.size(0), self.config.history
        kjt = KeyedJaggedTensor(
            keys=["user_history", "item_id"],
            values=torch.cat([history.reshape(-1), item]),
            lengths=torch.cat([torch.full((n,), length), torch.ones(n, dtype=torch.int64)]),
        )
        embedded = self.ec(kjt)
        history_jt = embedded["user_history"]
        sequence = history_jt.to_padded_dense(length) if self.config.pad_to_history else history_jt.to_padded_dense()
        target = embedded["item_id"].values()  # [N, d]
        weights = torch.softmax((sequence @ target.unsqueeze(-1)).squeeze(-1) / self.config.embedding_dim**0.5, dim=-1)
        attended = (weights.unsqueeze(-1) * sequence).sum(1)
        x = torch.cat([sequence.mean(1), self.user_tower(features["user_dense"]), attended, target], dim=-1)
        return torch.sigmoid(self.mlp(x)).squeeze(-1)


_dlrm, _deepfm, _ebc, _mh, _ec = DlrmConfig(), DeepFmConfig(), EbcMlpConfig(), MultiHotConfig(), EcSeqConfig()


def _ids_and_dense(vocab: tuple[tuple[str, int], ...], user_dense: int, item_dense: int) -> tuple[Feature, ...]:
    """One id per key (user-side when the key says so), then the user and item dense features."""
    ids = tuple(Feature(k, k.startswith("user"), vocab=v) for k, v in vocab)
    return (*ids, Feature("user_dense", True, (user_dense,)), Feature("item_dense", False, (item_dense,)))


CASES: dict[str, TorchrecCase] = {
    case.name: case
    for case in (
        TorchrecCase(
            "dlrm",
            DlrmRanker,
            _ids_and_dense(_dlrm.vocab, _dlrm.user_dense, _dlrm.item_dense),
            {"user_id": 1, "user_city": 1},
        ),
        TorchrecCase(
            "deepfm",
            DeepFmRanker,
            _ids_and_dense(_deepfm.vocab, _deepfm.user_dense, _deepfm.item_dense),
            {"user_id": 1, "user_age": 1},
        ),
        TorchrecCase(
            "ebc_mlp",
            EbcMlpRanker,
            (
                Feature("user_id", True, vocab=_ebc.user_vocab),
                Feature("user_recent_cats", True, (_ebc.recent,), vocab=_ebc.category_vocab),
                Feature("item_id", False, vocab=_ebc.item_vocab),
                Feature("item_cat", False, vocab=_ebc.category_vocab),
                Feature("user_dense", True, (_ebc.user_dense,)),
                Feature("item_dense", False, (_ebc.item_dense,)),
            ),
            {"user_id": 1, "user_recent_cats": _ebc.recent},  # "category_table" serves a user and an item key
        ),
        TorchrecCase(
            "multi_hot",
            MultiHotRanker,
            (
                Feature("user_id", True, vocab=_mh.user_vocab),
                Feature("item_id", False, vocab=_mh.item_vocab),
                Feature("item_tags", False, (_mh.tag_slots,), vocab=_mh.tag_vocab, padded=True),
                Feature("user_dense", True, (_mh.user_dense,)),
            ),
            {"user_id": 1},
        ),
        TorchrecCase(
            "ec_seq",
            EcSequenceRanker,
            (
                Feature("user_history", True, (_ec.history,), vocab=_ec.item_vocab),
                Feature("item_id", False, vocab=_ec.item_vocab),
                Feature("user_dense", True, (_ec.user_dense,)),
            ),
            {"user_history": _ec.history},  # one table serves the user's history and the candidate
        ),
        TorchrecCase(  # the padded length is max(lengths).item(): read from data, folded to the constant
            "ec_seq_longest",
            lambda: EcSequenceRanker(EcSeqConfig(pad_to_history=False)),
            (
                Feature("user_history", True, (_ec.history,), vocab=_ec.item_vocab),
                Feature("item_id", False, vocab=_ec.item_vocab),
                Feature("user_dense", True, (_ec.user_dense,)),
            ),
            {"user_history": _ec.history},
        ),
    )
}


def randomize_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fresh weights at a realistic scale: embeddings N(0, 0.5), Linear N(0, 1/fan_in), biases U(-0.1, 0.1)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                module.weight.normal_(0.0, 0.5, generator=generator)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1, generator=generator)
    return model


def build(case: TorchrecCase, generator: torch.Generator) -> nn.Module:
    return randomize_(case.build(), generator).eval()


TORCHREC_VERSION = torchrec.__version__
