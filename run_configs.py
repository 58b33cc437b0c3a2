"""Named training recipes: one dataclass per recipe, one field per flag.

A field `foo_bar` becomes `--foo-bar VALUE` on open_clip_train's command line (or the plugin's, see
`open_clip_patch/params.py`); None leaves the flag out so its default applies, True passes a bare switch,
a tuple passes several values. `src/training/main.py NAME [flags]` puts the user's flags after the recipe's,
so the last value wins, as with argparse.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import ClassVar

from mode.core.errors import UserError


@dataclass(frozen=True)
class Slurm:
    """Where a recipe's jobs run under `mode train-experts --executor slurm` (flags there override it)."""

    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 10
    time_min: int = 4320
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None


DATA_FLAGS = ("--data-dir", "--data_dir", "--train-data", "--toy-pool")


@dataclass
class Recipe:
    """Flags every recipe may set; subclasses change defaults or add fields."""

    # What a recipe needs that is not a flag (ClassVar fields are not emitted).
    needs: ClassVar[tuple[tuple[str, ...], ...]] = ()  # each: one of these flags must be given
    slurm: ClassVar[Slurm] = Slurm()
    seed_epochs: ClassVar[int | None] = None  # `mode train-experts`: epochs of the seed run the experts fork from

    model: str | None = None
    dataset_type: str | None = None
    dataset_resampled: bool = False
    batch_size: int | None = None
    global_batch_size: int | None = None
    accum_freq: int | None = None
    lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    wd: float | None = None
    warmup: int | None = None
    epochs: int | None = None
    samples_seen: int | None = None
    precision: str | None = None
    workers: int | None = None
    seed: int | None = None
    local_loss: bool = False
    gather_with_grad: bool = False
    grad_checkpointing: bool = False
    ddp_static_graph: bool = False
    save_frequency: int | None = None
    save_most_recent: bool = False
    resume: str | None = None
    log_every_n_steps: int | None = None
    name: str | None = None
    force_quick_gelu: bool = False
    toy_pool: str | None = None
    data_dir: str | None = None
    mode_work_dir: str | None = None
    expert: int | None = None
    expert_data: str | None = None
    ooc_ratio: float | None = None
    ooc_mode: str | None = None
    init_from: str | None = None
    stop_epoch: int | None = None
    grad_clip_norm: float | None = None
    dataset_reinforcement: bool = False
    dataset_reinforcement_config: str | None = None
    distill_loss_weights: tuple[float, float] | None = None
    distill_logit_scale: tuple[float, ...] | None = None
    distill_teacher_dimension: tuple[int, ...] | None = None
    distill_average_after_softmax: bool = False
    warmup_epochs: float | None = None
    use_bn_sync: bool = False
    rocket: str | None = None
    num_augs: int | None = None
    separate_proj: bool = False
    l2l_hidden_dim: int | None = None
    label_smoothing: float | None = None
    loss_avg_or_sum: str | None = None
    text_dropout_prob: float | None = None
    text_augment: bool = False
    clean_before_augment: bool = False
    synonym_replacement_prob: float | None = None
    barlip_proj_dim: int | None = None
    barlip_hidden_dim: int | None = None
    siamlip_proj_dim: int | None = None
    siamlip_hidden_dim: int | None = None

    def to_argv(self) -> list[str]:
        """The recipe as command-line flags, in field order."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if value is None or value is False:
                continue
            if value is True:
                argv.append(flag)
            elif isinstance(value, (tuple, list)):
                argv.extend([flag, *map(str, value)])
            else:
                argv.extend([flag, str(value)])
        return argv


@dataclass
class ToyTiny(Recipe):
    """The tiny ViT on the toy pool, on CPU in fp32: the demo's and the tests' recipe."""

    model: str = "ViT-Toy-8"
    toy_pool: str = "runs/toy"
    dataset_type: str = "webdataset"
    batch_size: int = 64
    lr: float = 2e-3
    wd: float = 0.1
    warmup: int = 20
    epochs: int = 5
    precision: str = "fp32"
    workers: int = 1
    seed: int = 0
    log_every_n_steps: int = 10


@dataclass
class ClusterRecipe(Recipe):
    """What every multi-GPU web-scale recipe here shares: resampled webdataset shards, amp, the global-batch
    contrastive loss computed locally, and a run that resumes its own latest checkpoint."""

    dataset_type: str = "webdataset"
    dataset_resampled: bool = True
    precision: str = "amp"
    seed: int = 0
    local_loss: bool = True
    gather_with_grad: bool = True
    save_most_recent: bool = True
    resume: str = "latest"


@dataclass
class DataCompScale(ClusterRecipe):
    """DataComp's fixed recipe for one scale (its train.py): only the data may change.

    The budget is fixed in samples seen and global batch; `--epochs` is DataComp's `--num_checkpoints`
    (default 5), and the per-process batch follows from world size and `--accum-freq`.
    """

    needs: ClassVar[tuple[tuple[str, ...], ...]] = (DATA_FLAGS,)

    model: str = "ViT-B-32"
    global_batch_size: int = 4096
    lr: float = 5e-4
    warmup: int = 500
    epochs: int = 5
    samples_seen: int = 12_800_000
    workers: int = 4
    grad_checkpointing: bool = True
    ddp_static_graph: bool = True
    save_frequency: int = 0
    log_every_n_steps: int = 100


@dataclass
class ToyTinyMode(ToyTiny):
    """One MoDE expert of the toy pool on CPU; the clustering comes from `run_mode.sh prep-steps runs/toy W`."""

    mode_work_dir: str = "runs/toy_work"
    dataset_resampled: bool = True
    ooc_ratio: float = 0.02
    ooc_mode: str = "additive"
    epochs: int = 3
    log_every_n_steps: int = 5


@dataclass
class MoDEExpert(ClusterRecipe):
    """MoDE's expert recipe (MetaCLIP's run_configs_mode.b32_mode): one coarse cluster of a 400M-pair pool.

    64 GPUs x 512 = 32768 global batch, 32 epochs of 400M samples; `mode train-experts` trains the dense seed run
    to epoch 27 and forks every expert from its checkpoint (model + optimizer + schedule position, as MoDE does),
    or pass your own seed with `--init-from logs/<dense>/checkpoints/epoch_27.pt`.
    """

    needs: ClassVar[tuple[tuple[str, ...], ...]] = (("--mode-work-dir",), (*DATA_FLAGS, "--expert-data"))
    slurm: ClassVar[Slurm] = Slurm(nodes=8, gpus_per_node=8, cpus_per_task=10, time_min=4320)
    seed_epochs: ClassVar[int | None] = 27

    model: str = "ViT-B-32-quickgelu"
    global_batch_size: int = 32768
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    wd: float = 0.2
    warmup: int = 2000
    epochs: int = 32
    train_num_samples: int = 400_000_000
    workers: int = 8
    save_frequency: int = 1
    ooc_ratio: float = 0.02
    ooc_mode: str = "additive"


@dataclass
class MoDEExpertL14(MoDEExpert):
    slurm: ClassVar[Slurm] = Slurm(nodes=16, gpus_per_node=8, cpus_per_task=10, time_min=4320)


@dataclass
class DataCompDR(ClusterRecipe):
    """ml-mobileclip's DataComp-12M recipe (configs/run_datacomp12m.sh): ViT-B-16, 30k steps of global batch
    8192 in 20 checkpoints; the DR recipes add the reinforcements and the distillation loss."""

    needs: ClassVar[tuple[tuple[str, ...], ...]] = (DATA_FLAGS,)
    slurm: ClassVar[Slurm] = Slurm(nodes=4, gpus_per_node=8, cpus_per_task=8, time_min=4320)

    model: str = "ViT-B-16"
    global_batch_size: int = 8192
    lr: float = 1e-3
    beta2: float = 0.95
    wd: float = 0.2
    warmup: int = 1000
    epochs: int = 20
    samples_seen: int = 30_000 * 8192
    workers: int = 4
    grad_checkpointing: bool = True
    ddp_static_graph: bool = True
    grad_clip_norm: float = 1.0
    save_frequency: int = 1
    log_every_n_steps: int = 20


@dataclass
class ToyTinyDR(ToyTiny):
    """The tiny ViT on a toy pool reinforced by `mode dr-generate` (one tiny teacher), on CPU."""

    toy_pool: str | None = None
    data_dir: str = "runs/toy_dr"
    dataset_reinforcement: bool = True
    dataset_reinforcement_config: str = "dr_augment_12m"
    distill_loss_weights: tuple[float, float] = (0.5, 0.5)
    distill_logit_scale: tuple[float, ...] = (100.0,)
    grad_clip_norm: float = 1.0


@dataclass
class CLIPRocket(ClusterRecipe):
    """clip-rocket's ViT-B/16 CLIP:rocket recipe (repro_exps.txt, YFCC15M: 4 nodes x 8 GPUs x 128 = 4096; its
    main.py's optimiser: AdamW lr 3e-3, betas .9/.98, eps 1e-8, wd 0.1, 1 warm-up epoch, 32 epochs, amp), on
    DataComp-layout data. Its embedding is 256-wide (ViT-B-16-rocket); its loss gathers without gradient and
    averages this rank's rows, which is open_clip's local loss without gather-with-grad."""

    needs: ClassVar[tuple[tuple[str, ...], ...]] = (DATA_FLAGS,)
    slurm: ClassVar[Slurm] = Slurm(nodes=4, gpus_per_node=8, cpus_per_task=10, time_min=4320)

    model: str = "ViT-B-16-rocket"
    dataset_resampled: bool = False
    local_loss: bool = False
    gather_with_grad: bool = False
    global_batch_size: int = 4096
    lr: float = 3e-3
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    wd: float = 0.1
    warmup_epochs: float = 1.0
    epochs: int = 32
    workers: int = 10
    grad_checkpointing: bool = True
    save_frequency: int = 1
    log_every_n_steps: int = 25
    use_bn_sync: bool = True
    rocket: str = "cl2l"
    num_augs: int = 2
    separate_proj: bool = True
    label_smoothing: float = 0.1
    loss_avg_or_sum: str = "sum"
    text_dropout_prob: float = 0.0
    text_augment: bool = True
    clean_before_augment: bool = True


@dataclass
class ToyTinyRocket(ToyTiny):
    """CLIP:rocket on the toy pool, on CPU: the real recipe's flags, narrower view heads (256, not 4096) and no
    synonym replacement (WordNet is a download; pass --synonym-replacement-prob 0.4 --wordnet-dir DIR)."""

    rocket: str = "cl2l"
    num_augs: int = 2
    separate_proj: bool = True
    l2l_hidden_dim: int = 256
    label_smoothing: float = 0.1
    loss_avg_or_sum: str = "sum"
    text_augment: bool = True
    clean_before_augment: bool = True
    synonym_replacement_prob: float = 0.0
    barlip_proj_dim: int = 512
    barlip_hidden_dim: int = 256
    siamlip_proj_dim: int = 64
    siamlip_hidden_dim: int = 256
    epochs: int = 3
    log_every_n_steps: int = 5


_DR = {"dataset_reinforcement": True, "distill_logit_scale": (100.0,), "distill_teacher_dimension": (768, 768),
       "distill_average_after_softmax": True}


def _scale(name: str, **overrides) -> DataCompScale:
    return DataCompScale(name=f"{name}_scale", **overrides)


RECIPES = {
    "toy_tiny": ToyTiny,
    "datacomp_small": lambda: _scale("small"),
    "datacomp_medium": lambda: _scale("medium", samples_seen=128_000_000),
    "datacomp_large": lambda: _scale("large", model="ViT-B-16", global_batch_size=8192,
                                     samples_seen=1_280_000_000),
    "datacomp_xlarge": lambda: _scale("xlarge", model="ViT-L-14", global_batch_size=90112, lr=1e-3,
                                      warmup=10000, beta2=0.95, samples_seen=12_800_000_000),
    "datacomp12m": lambda: DataCompDR(name="datacomp12m"),
    "datacompdr12m": lambda: DataCompDR(name="datacompdr12m", dataset_reinforcement_config="dr_augment_12m",
                                        distill_loss_weights=(0.0, 1.0), **_DR),
    "datacompdr1b": lambda: DataCompDR(name="datacompdr1b", global_batch_size=65536, epochs=100,
                                       samples_seen=200_000 * 65536, dataset_reinforcement_config="dr_augment_1b",
                                       distill_loss_weights=(0.25, 0.75), **_DR),
    "toy_tiny_dr": ToyTinyDR,
    "toy_tiny_mode": ToyTinyMode,
    "b32_mode": MoDEExpert,
    "b16_mode": lambda: MoDEExpert(model="ViT-B-16-quickgelu", grad_checkpointing=True),
    "l14_mode": lambda: MoDEExpertL14(model="ViT-L-14-quickgelu", lr=4e-4, grad_checkpointing=True),
    "cliprocket_b16": lambda: CLIPRocket(name="cliprocket_b16"),
    "cliprocket_b16_siamlip": lambda: CLIPRocket(name="cliprocket_b16_siamlip", rocket="siamlip"),
    "cliprocket_b16_byolip": lambda: CLIPRocket(name="cliprocket_b16_byolip", rocket="byolip"),
    "cliprocket_b16_barlip": lambda: CLIPRocket(name="cliprocket_b16_barlip", rocket="barlip"),
    "cliprocket_b16_swalip": lambda: CLIPRocket(name="cliprocket_b16_swalip", rocket="swalip", label_smoothing=0.0),
    "toy_tiny_rocket": ToyTinyRocket,
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name raises UserError naming the closest ones."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=3, cutoff=0.3)
        hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(sorted(RECIPES))}"
        raise UserError(f"unknown config {name!r}; {hint}")
    return RECIPES[name]()


_NEEDS_HELP = {
    DATA_FLAGS[0]: "data: pass --data-dir DIR (DataComp layout; '::' joins several) or --train-data SHARDS",
    "--mode-work-dir": "a clustering: pass --mode-work-dir W (made by run_mode.sh prep-steps)",
}


def build_argv(name: str, extra: list[str]) -> list[str]:
    """The recipe's flags followed by the user's, checked for what the recipe needs."""
    recipe = get_recipe(name)
    argv = recipe.to_argv() + list(extra)
    given = {t.split("=", 1)[0] for t in argv}
    for alternatives in type(recipe).needs:
        if not given.intersection(alternatives):
            raise UserError(f"config {name!r} needs {_NEEDS_HELP.get(alternatives[0], ' or '.join(alternatives))}")
    return argv
