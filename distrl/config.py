"""Typed, frozen experiment configuration.

Every knob of a run lives in one :class:`ExperimentConfig`, built from nested frozen dataclasses. A config is
loaded from YAML (with ``include:`` composition) and command-line overrides, type-checked field by field, and
validated once (:meth:`ExperimentConfig.validate`) before anything starts. Unknown keys, wrong types and
inconsistent pairs of fields fail with a :class:`ConfigError` that names the key and the file.

Usage::

    cfg = load_config("configs/minihack_room.yaml", ["learner.lr=3e-4", "runtime.mode=local"])
    cfg.learner.lr        # 0.0003

The dataclass defaults are a complete, runnable config (MiniHack-Room-5x5 with the full NetHack model, local
Ray; ``configs/defaults.yaml`` writes them out). The quickstart, what ``distrl train`` runs with no config, is
:func:`quickstart_config`: the defaults with the small MiniHack model (``configs/quickstart.yaml``).

This module imports nothing from distrl.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid. The message names the key and, when known, the file."""


# --------------------------------------------------------------------------------------------------------------
# Config sections
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    name: str = "MiniHack-Room-5x5-v0"
    """Environment id. Prefixes pick the family: MiniHack-*, ALE/*, habitat:*, MiniWorld-*, fake:*."""
    num_envs: int = 16
    """Env slots per env actor (the actor's vectorisation width B)."""
    vectorization: Literal["inline", "subprocess"] = "inline"
    """How an actor steps its envs: in its own process or in worker subprocesses."""
    num_workers: int = 2
    """Worker subprocesses per actor when vectorization == 'subprocess'."""
    observation_keys: tuple[str, ...] = ()
    """Observation keys to keep (env-family default when empty)."""
    max_episode_steps: int = 0
    """Truncate episodes after this many steps (0 = the env's own limit)."""
    seed: int = 0
    num_levels: int = 0
    """MiniHack: 0 = a new level (layout, NetHack seeds) every episode; k > 0 = each episode plays one of k
    fixed levels, drawn at random, that depend on env.seed alone, so every actor and env slot shares them (the
    number of contexts |C| of the global-vs-episodic bonus study; 1 = a singleton MDP)."""
    frame_skip: int = 4
    """Atari: frames per agent step (max-pooled over the last two)."""
    frame_stack: int = 4
    """Atari: frames stacked into one observation."""
    sticky_action_prob: float = 0.25
    """Atari: ALE v5 repeat_action_probability."""
    noop_max: int = 30
    """Atari: random no-ops at reset."""
    terminal_on_life_loss: bool = False
    """Atari: end the *learning* episode on a life loss (reported returns stay full-game)."""
    image_size: int = 84
    """Pixel envs (Atari, MiniWorld, Habitat): square observation side."""
    crop_size: int = 9
    """MiniHack: egocentric crop side."""
    reward_free: bool = False
    """Zero the extrinsic reward (reward-free exploration, e.g. Habitat E3B)."""
    habitat_config: str = ""
    """Habitat: path to a habitat-lab task config (only used by the real adapter)."""
    habitat_overrides: tuple[str, ...] = ()
    """Habitat: extra habitat config overrides (data paths, 'habitat.simulator.habitat_sim_v0.gpu_device_id=-1')."""
    fake_episode_len: int = 5
    """fake:* envs: episode length."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    encoder: Literal[
        "auto", "nethack", "nethack_small", "nature_cnn", "small_cnn", "impala_cnn", "rgbd", "mlp"
    ] = "auto"
    """Observation encoder; 'auto' picks from the env family (nethack, nature_cnn, rgbd or mlp).
    'nethack_small' (crop + blstats) and 'small_cnn' (DQN 2013) are cheap encoders for CPU-bound runs."""
    core: Literal["lstm", "identity", "hcam"] = "lstm"
    hidden_size: int = 256
    """Width of the encoder output and of the core."""
    glyph_embedding_dim: int = 32
    """NetHack encoder: glyph embedding width."""
    num_core_layers: int = 1
    hcam_chunk: int = 8
    """HCAM: steps per memory chunk (C); also the width of the local attention window."""
    hcam_chunks: int = 32
    """HCAM: chunks kept per layer (M, FIFO): the memory spans hcam_chunk * hcam_chunks steps."""
    hcam_topk: int = 4
    """HCAM: chunks each query attends to in detail (k, chosen by relevance to the chunk summaries)."""
    hcam_heads: int = 4
    """HCAM: attention heads inside the chosen chunks and in the local window (must divide hidden_size)."""
    hcam_cross_episode: bool = False
    """HCAM: keep the memory across episode starts (only the chunk being filled is dropped); false = clear it."""
    separate_intrinsic_value: bool = False
    """Add a second value head for intrinsic rewards (the architecture: learner, actors and evaluation build it);
    it is trained with bonus.value_heads=2, and the two must agree."""


@dataclass(frozen=True, kw_only=True)
class SequenceConfig:
    length: int = 40
    """T: steps per sequence the learner trains on (after burn-in)."""
    burn_in: int = 0
    """Steps before T that only warm the core state (no gradient)."""
    period: int = 40
    """Steps between the starts of consecutive sequences (period < burn_in + length means overlap)."""

    @property
    def total(self) -> int:
        """Steps stored per sequence: burn_in + length."""
        return self.burn_in + self.length


@dataclass(frozen=True, kw_only=True)
class ReplayConfig:
    num_shards: int = 1
    capacity: int = 4096
    """Max sequences per shard (FIFO eviction)."""
    alpha: float = 0.6
    """Priority exponent (0 = uniform)."""
    beta_start: float = 0.4
    beta_end: float = 1.0
    beta_steps: int = 10_000
    """Learner updates over which beta anneals linearly from beta_start to beta_end."""
    priority_eta: float = 0.9
    """Sequence priority = eta * max|td| + (1 - eta) * mean|td| (R2D2)."""
    epsilon: float = 1e-6
    min_size: int = 32
    """Sequences a shard must hold before it may be sampled."""
    samples_per_insert: float = 2.0
    """Rate limit: sampled / inserted sequences (0 disables). Each update takes online_fraction * batch_size fresh
    sequences, so 1 / learner.online_fraction lets inserts keep pace with the learner (2.0 for the default 0.5);
    a larger value throttles the actors below what the learner consumes."""
    samples_per_insert_tolerance: float = 0.5
    """Allowed relative deviation from samples_per_insert before callers are held back."""
    max_inflight_inserts: int = 4
    """Per actor: inserts sent but not yet acknowledged."""
    checkpoint_every_s: float = 0.0
    """Seconds between shard checkpoints (0 = only at the end of a run)."""
    num_cpus: float = 0.5
    """Ray runtime: CPUs each replay shard actor reserves."""
    compress_obs: bool = False
    """Keep every observation leaf (``obs/*``, and ``obs_stack/*`` of frame stacks) zlib-compressed, one blob per
    sequence (level 1), instead of a plain array. Pixels and symbolic maps compress well: Pong's stored sequence
    43x smaller (313 KB to 7.2 KB, acknowledged faster, +4 ms to sample 32), the quickstart's observations about
    21x; float observations such as RGB-D compress little and cost CPU (BENCHMARKS.md, "Observations compressed in
    replay")."""


@dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    batch_size: int = 32
    """Sequences per learner update (per learner)."""
    online_fraction: float = 0.5
    """Share of each batch taken from fresh, not yet trained-on sequences."""
    lr: float = 6e-4
    optimizer: Literal["rmsprop", "adam"] = "adam"
    rmsprop_alpha: float = 0.99
    eps: float = 1e-5
    grad_clip: float = 40.0
    discount: float = 0.99
    entropy_cost: float = 0.01
    baseline_cost: float = 0.5
    clip_rho: float = 1.0
    clip_c: float = 1.0
    clip_pg_rho: float = 1.0
    reward_clip: float = 1.0
    """Clip combined rewards to [-reward_clip, reward_clip] (0 disables)."""
    kl_trust_region: float = 0.0
    """Mask replayed steps whose KL(mu || pi) exceeds this many nats (0 disables)."""
    kl_cost: float = 0.0
    """Coefficient of a KL(mu || pi) penalty on fresh steps, whose behaviour policy is a few updates old: it pulls pi
    back towards the policy that just acted, whatever data moved it (RLlib's APPO has such a term; here on fresh
    steps only, since a replayed step's mu can be hundreds of updates old). 0 disables."""
    ppo_clip: float = 0.0
    """> 0: the policy term is PPO's clipped surrogate against the behaviour policy (Sample Factory's APPO), the
    ratio pi/mu clipped to [1/(1+eps), 1+eps], over V-trace advantages without the rho factor; a step then stops
    pushing pi(a) once it is a factor 1+eps from mu(a). 0: V-trace's policy gradient (truncated-IS weighted)."""
    ppo_clip_against: Literal["behaviour", "proximal"] = "behaviour"
    """What learner.ppo_clip's ratio is measured against: the behaviour policy mu, or the proximal policy, a copy of
    pi refreshed every proximal_period updates (the advantage then carries min(clip_pg_rho, pi_prox/mu)), so that
    replayed rows are not held near behaviour hundreds of updates old."""
    proximal_kl_cost: float = 0.0
    """Coefficient of a KL(pi_prox || pi) penalty on every valid step, fresh or replayed, against the proximal policy
    (a copy of pi refreshed every proximal_period updates; MPO / V-MPO's target-network bound). 0 disables."""
    proximal_period: int = 10
    """Learner updates between refreshes of the proximal policy (used only with ppo_clip_against=proximal or
    proximal_kl_cost > 0, which cost one more forward pass per update)."""
    max_policy_lag: int = 100
    """Drop fresh sequences whose policy is more than this many learner updates old."""
    publish_every: int = 1
    """Publish weights to actors every N learner updates."""
    num_learners: int = 1
    """Data-parallel learners (gradient all-reduce)."""
    device: str = "auto"
    """'auto' = cuda when available, else cpu."""
    checkpoint_every: int = 500
    """Learner updates between checkpoints (0 = only at the end). The Ray runtime also writes one as the run starts,
    and restarts a dead learner from the latest: with 0 that is the start of the run (all updates lost, with a
    warning)."""
    threads: int = 1
    """torch intra-op threads on a CPU learner."""
    precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """What the encoder's forward and backward compute in on the learner: 'bfloat16' runs the encoder under
    autocast over float32 weights (mixed precision: weights, gradients, optimizer state, core, heads and losses
    stay float32; actors are not affected). For a CNN encoder on a CPU with native bfloat16 (AVX512-BF16 or
    AMX) or a GPU: Pong's Nature CNN forward + backward took half the time on an AMD EPYC (BENCHMARKS.md).
    'auto' = bfloat16 where the learner's device has native bfloat16 matrix products (such a CPU, or a GPU that
    supports it), else float32: emulated bfloat16 made a Pong update 6.4x slower on a CPU without it."""
    num_cpus: float = 1.0
    """Ray runtime: CPUs each learner actor reserves (it also gets a GPU when the cluster has one per learner)."""
    reconstruction_cost: float = 0.0
    """> 0: the self-supervised reconstruction loss (the "reconstruction" extra, switched on by this): a decoder
    predicts each step's observation from the core's output, and its squared error, times this cost, shapes the
    encoder and the core (HCAM's agent trains such losses beside RL; ALGORITHMS.md §2.6). 0 disables."""
    reconstruction_keys: tuple[str, ...] = ()
    """Observation keys the reconstruction loss predicts (empty: every key the encoder reads). Float leaves are
    predicted as they are, uint8 ones scaled to [0, 1], int8 and bool ones as their values; other integer leaves
    (NetHack's glyph ids) are categories, not quantities, and are refused."""
    extras: tuple[str, ...] = ()
    """Auxiliary modules the learner trains beside the agent, by registry name
    (``distrl.learners.extras.EXTRAS``): their own losses, optimizer groups, checkpoint entries and actor
    weights."""


@dataclass(frozen=True, kw_only=True)
class ActorConfig:
    num_actors: int = 1
    weight_sync_every: int = 1
    """Check the weight store for a newer version every N sequence emissions."""
    device: str = "cpu"
    threads: int = 1
    num_cpus: float = 0.0
    """Ray runtime: CPUs each env actor reserves (0 = 1 for its own process, plus env.num_workers with
    env.vectorization=subprocess)."""
    inference: Literal["auto", "torch", "numpy"] = "auto"
    """How a CPU actor runs its policy: 'numpy' (distrl.models.numpy_act: the same function, ~2x cheaper per
    call between env steps, for the nethack_small/mlp encoders, the Atari CNNs (their convolutions through
    PyTorch) and lstm/identity cores), 'torch' (Agent.act), 'auto' = numpy where it can run the model on this
    device, else torch. With numpy or auto, a Ray env actor (and the Ray evaluator) whose model has no HCAM or
    Impala CNN part acts through distrl.models.numpy_kernels and loads no torch (the learner checks those kernels
    against Agent.act when it starts, and stops the run naming actor.inference=torch if they differ); for the
    nature_cnn/small_cnn encoders that is float32 NumPy convolutions, unless actor.precision=bfloat16."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Dtype of the encoder when an actor acts through torch (the NumPy path is float32 but for the CNNs' convs,
    which it runs through PyTorch; a Ray actor on the torch-free kernels is float32 throughout, and 'bfloat16'
    keeps a CNN model's Ray actors on the PyTorch convs instead): 'bfloat16'
    casts the encoder's weights and inputs (core, heads and recorded logits stay float32; the learner always
    trains in float32), 'auto' = bfloat16 where the CPU has native bfloat16 dot products (AVX512-BF16 or
    AMX) and the actor, timing one encoder call in each dtype at its batch size when it starts, measures it
    at least 10% faster, else float32 (bfloat16 was 1.3-1.7x cheaper per act for the Atari CNNs on an AMD
    EPYC, but 1.1-2x dearer on an Intel Xeon that also reports AVX512-BF16)."""


@dataclass(frozen=True, kw_only=True)
class BonusConfig:
    episodic: Literal["none", "e3b", "count"] = "none"
    glob: Literal["none", "rnd", "noveld", "count"] = "none"
    combine: Literal["mult", "add"] = "mult"
    coef: float = 1.0
    global_coef: float = 1.0
    """beta for combine == 'add'."""
    normalize: Literal["int", "none"] = "int"
    ridge: float = 0.1
    """E3B: lambda of the per-episode covariance lambda*I + sum phi phi^T (the E3B code's default)."""
    count_key: Literal["position", "message", "glyphs", "obs"] = "position"
    """State key psi(s) that count bonuses count (distrl.bonuses.keys): the agent's (x, y), the message, the
    glyph map or the whole observation."""
    count_form: Literal["first_visit", "isqrt"] = "first_visit"
    """Episodic counts: 'first_visit' = 1 on the first visit of a key in the episode, else 0 (the study's
    I[N_e = 1]); 'isqrt' = 1/sqrt(N_e) (RIDE/AGAC)."""
    e3b_lr: float = 3e-4
    """Learning rate of the E3B embedding and inverse-dynamics head (their own group in the learner's optimizer,
    Adam by default). The E3B code's 1e-4 served ~78k updates; distrl's CPU runs make hundreds to a few
    thousand, and on MultiRoom-N4 the IDM's held-out loss reached its plateau in ~100 updates at 3e-4 against
    ~250 at 1e-4 (1e-3: little faster)."""
    e3b_dim: int = 0
    """E3B embedding width (0 = model.hidden_size)."""
    e3b_encoder: Literal[
        "", "auto", "nethack", "nethack_small", "nature_cnn", "small_cnn", "impala_cnn", "rgbd", "mlp"
    ] = ""
    """E3B embedding architecture: a model.encoder name ('' = the policy's, model.encoder, as in the E3B code).
    The actors run it every step: 'nethack_small' (or another encoder with a NumPy kernel) keeps it cheap."""
    e3b_resym_every: int = 256
    """E3B: re-symmetrise each inverse covariance every this many of its updates (0 = never)."""
    rnd_power: float = 1.0
    """RND/NovelD: novelty = ||f(s) - f_bar(s)|| ** rnd_power (1 = the E3B code's un-squared norm; 2 = the paper's
    equation)."""
    rnd_on: Literal["next", "current"] = "next"
    """The state a step's global bonus (RND, global counts) is evaluated on, and the RND predictor trained on:
    'next' = s_{t+1}, the state the action led to (the E3B code); 'current' = s_t (the paper's equation). NovelD
    always compares the two."""
    noveld_scale: float = 0.1
    """NovelD: c in [b(s_{t+1}) - c * b(s_t)]_+ (the E3B sweep's best, 0.1; 0 = RND on s_{t+1})."""
    rnd_lr: float = 1e-4
    """Learning rate of the RND predictor's own optimizer group (the E3B code's Adam 1e-4)."""
    rnd_net: Literal["e3b", "small"] = "e3b"
    """RND/NovelD networks (distrl.bonuses.global_bonus): 'e3b' = the E3B code's, a frozen random copy of the
    policy's encoder feeding a 4-layer frozen target and a 5-layer predictor; 'small' = the same distillation on
    cheaper networks, learner-side only: the policy's encoder kind at width 128 with glyph embeddings at most 8
    wide (nethack -> nethack_small with glyphs_crop, nature_cnn/impala_cnn -> small_cnn), a 2-layer target and
    a 3-layer predictor (about 0.4x the e3b networks' learner cost on the 2-core MiniHack preset)."""
    rnd_hidden: int = 0
    """Width of the RND predictor's two hidden layers (0 = by rnd_net: 256 for 'e3b', 128 for 'small'; the E3B
    code: 1024, over a 1024-d encoder)."""
    count_power: float = 0.5
    """Global counts: bonus = N(psi(s)) ** -count_power (0.5 = 1/sqrt(N), GEB eq. 7)."""
    count_shards: int = 1
    """Global counts on the Ray runtime: count-table actors, keys routed by hash (one is plenty below ~100
    actors)."""
    value_heads: int = 1
    """1 = one value head on r_ext + r_int (the E3B code); 2 = separate extrinsic and intrinsic value heads
    (RND, Burda et al. 2018 §2.3): V-trace runs once per head over the same importance ratios and the policy
    gradient uses A_ext + intrinsic_adv_coef * A_int (distrl.learners.vtrace). Needs a bonus, and the model's
    second head: model.separate_intrinsic_value=true (the architecture, which the actors build too)."""
    intrinsic_gamma: float = 0.99
    """value_heads=2: discount of the intrinsic return (RND's gamma_I = 0.99)."""
    intrinsic_episodic: bool = True
    """value_heads=2: true = the intrinsic return ends with the episode (E3B's bonus resets there); false = it
    runs on across episode ends (RND's non-episodic intrinsic return), cut only where the env stream itself
    breaks (a faulted env step)."""
    intrinsic_adv_coef: float = 1.0
    """value_heads=2: weight of the intrinsic advantage in A_ext + c * A_int (1 = what one head on the summed
    reward would use; RND's 2:1 extrinsic:intrinsic weighting is 0.5)."""


@dataclass(frozen=True, kw_only=True)
class DurationConfig:
    """Duration-aware updates (ALGORITHMS.md §3, ``distrl.learners.duration``): how the learner corrects for
    steps that take different wall-clock time reaching it at different rates."""

    mode: Literal["off", "paper", "episode", "prior", "inclusion"] = "off"
    """'paper': policy-gradient weight dt / batch-mean dt (clipped); 'episode': the same with the episode's
    duration broadcast over its steps; 'prior': (dt / running-mean dt) ** kappa as a replay sampling prior,
    divided out of the IS weights (no loss weight on prioritised rows); 'inclusion': weight 1 / estimated
    probability that a launched step reaches the learner (binned by dt), normalised to batch mean 1."""
    w_min: float = 0.1
    """Clip of the normalised weight (paper, episode, inclusion)."""
    w_max: float = 10.0
    kappa: float = 1.0
    """'prior': exponent of the duration prior."""
    bins: int = 16
    """'inclusion' and the instrumentation: log-spaced dt bins between dt_min and dt_max."""
    dt_min: float = 1e-4
    dt_max: float = 100.0
    window_s: float = 0.0
    """'inclusion' without launch counts: windowed collection of this many seconds, P_incl = max(0, 1 - dt/W)
    (0 = estimate P_incl from launched vs consumed counts only)."""
    instrument: bool = True
    """Log dt at launch vs consumption, policy lag per dt bin and action shares vs pi at launch
    (``extras/duration/...``) even with mode 'off' (the extra is then on, with no weight)."""


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    mode: Literal["ray", "local"] = "ray"
    """'ray' = Ray actors (local cluster or RAY_ADDRESS); 'local' = everything in this process."""
    address: str = ""
    """Ray address to join ('' = RAY_ADDRESS or a fresh local cluster)."""
    num_cpus: int = 0
    """CPUs for a fresh local Ray cluster (0 = all)."""
    total_env_steps: int = 40_000
    max_wall_time_s: float = 0.0
    """Stop after this many seconds (0 = no limit)."""
    run_dir: str = "runs"
    """Where runs are kept: a local or shared-filesystem path, or an fsspec URI (``s3://bucket/runs``,
    ``gs://...``, ``file:///...``). A relative path is resolved against the working directory, except inside a
    ``ray job submit`` job (whose working directory Ray deletes), where it goes under ``~/distrl_runs``."""
    run_name: str = ""
    """Run directory name under run_dir ('' = generated)."""
    seed: int = 0
    actor_restarts: int = 3
    """Times the runtime restarts a dead env actor (per actor id) before failing the run."""
    shard_restarts: int = 3
    """Ray runtime: times the runtime restarts a dead replay shard (per shard id, from its last checkpoint)
    before failing the run with an error naming the shard."""
    actor_stuck_timeout_s: float = 300.0
    """Ray runtime: an env actor whose loop has been inside one step (env step + policy) for this long, or whose
    hosted evaluation (``eval.host=env_actor``) has been inside one env call for this long, or that does not
    answer a status call for this long (at most 30 s), is taken for hung (a stuck env), killed and restarted
    like a dead one (0 = never). A starting actor (its constructor, and its first step, which builds
    its envs) is given ``placement_timeout_s`` instead: on a busy machine starting can take longer. An evaluator
    actor (``eval.host=evaluator``, or standing in while env actor 0 is down) inside one env call for this long,
    or silent for this long (at most 30 s) once started, is killed and its evaluation dropped; a fresh one plays
    the next evaluation."""
    learner_restarts: int = 3
    """Ray runtime: times the runtime restarts a learner (by rank) that died, hung or raised, from the last
    learner checkpoint, before failing the run with an error naming it. With several learners the group re-forms
    (a new torch.distributed process group) and every learner goes back to that checkpoint."""
    learner_stuck_timeout_s: float = 300.0
    """Ray runtime: a learner whose training call (about half a second of updates) has not returned for this long
    is taken for hung, killed and restarted like a dead one (0 = never). With several learners it also bounds the
    torch.distributed collectives: an all-reduce waits at most half of it for a peer, then fails, so the
    survivors of a dead or hung peer return and re-form the group (0: torch's default, 30 minutes)."""
    placement_timeout_s: float = 600.0
    """Ray runtime: fail when learners or env actors are still unplaced (too few CPUs/GPUs in the cluster) after
    this many seconds (0 = wait for ever, e.g. for an autoscaler to add nodes); a restarted env actor that has not
    started (built its envs and stepped once) within it is restarted again."""
    node_labels: bool = True
    """Ray runtime: when the cluster declares a custom resource named ``learner``, ``env_actor`` or
    ``replay_shard`` (clusters/*.yaml label their node kinds so), each learner, env actor or replay shard asks
    for 0.001 of it, which pins it to those nodes (CPUs and GPUs still decide how many fit); false = place by
    CPUs and GPUs only."""
    fit_to_cluster: bool = True
    """Ray runtime, joining a cluster that declares no node labels and has fewer CPUs than the run reserves
    (e.g. ``ray start --head`` on a laptop): scale every CPU reservation down by the same factor so the run fits,
    and say so; false = keep them and wait for more nodes (an autoscaling cluster without node labels; the
    labelled clusters of clusters/*.yaml are never scaled)."""


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    wandb: Literal["offline", "online", "disabled", "auto"] = "auto"
    """'auto' = online when WANDB_API_KEY is set, else offline."""
    wandb_project: str = "distrl"
    wandb_entity: str = ""
    tensorboard: bool = False
    log_every_s: float = 5.0
    progress: bool = True


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation during training: a few episodes on separate envs (their own seeds), logged under ``eval/``.
    ``max_steps`` and ``stuck_steps`` apply to ``distrl eval`` too (override them there as ``eval.max_steps=...``).
    Not part of the config fingerprint: changing it never blocks ``--resume``."""

    every_updates: int = 20
    """Evaluate whenever the learner version crosses a multiple of this, and once at the end (0 = never). The
    quickstart makes about 60 learner updates in 40k env steps."""
    episodes: int = 5
    """Episodes per evaluation during training."""
    greedy: bool = False
    """Take the argmax action instead of sampling. False evaluates the policy as it was trained (sampled), as
    the NetHack and Atari baselines do; a greedy policy can get stuck repeating one action."""
    video: bool = True
    """Record the first episode of each evaluation during training: ``<run_dir>/videos/eval_<version>.mp4``
    (GIF without PyAV), and ``eval/video`` on wandb."""
    max_steps: int = 27_000
    """Cap on an evaluation episode's length (agent steps) when the env has no shorter limit of its own
    (27,000 = Atari's 108k frames at frame skip 4)."""
    stuck_steps: int = 20
    """Greedy only: end an episode as stuck when the same (observation, action) pair, or a cycle of up to 4
    pairs, has repeated for this many steps; it counts in ``eval/stuck_episodes`` (0 = never)."""
    host: Literal["env_actor", "evaluator"] = "env_actor"
    """Ray runtime: where the evaluation episodes are played. ``env_actor``: on a thread of env actor 0, beside
    its training envs, with no process of its own. On Room-5x5 that lowers the run's peak PSS by 89 MB (the
    evaluator process held ~175 MB; env actor 0 grows by ~78 MB with the episodes and their video), and the
    episodes use the CPU that actor leaves idle while the replay rate limiter holds it back. When that actor is
    down, an evaluator actor stands in. ``evaluator``: always an evaluator actor of its own (``eval.num_cpus``),
    for actors too busy or too big to host it."""
    num_cpus: float = 0.0
    """Ray runtime, ``eval.host=evaluator`` (or standing in for a down env actor 0): CPUs the evaluator actor
    reserves (0: it shares the others' CPUs; it runs a few episodes now and then and never blocks placement)."""


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    bonus: BonusConfig = field(default_factory=BonusConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    duration: DurationConfig = field(default_factory=DurationConfig)

    def validate(self) -> ExperimentConfig:
        """Cross-field checks. Raises ConfigError naming the fields; returns self for chaining."""
        checks: list[tuple[bool, str]] = [
            (self.env.num_envs >= 1, "env.num_envs must be >= 1"),
            (self.sequence.length >= 1, "sequence.length must be >= 1"),
            (self.sequence.burn_in >= 0, "sequence.burn_in must be >= 0"),
            (
                1 <= self.sequence.period <= self.sequence.total,
                f"sequence.period ({self.sequence.period}) must be in [1, burn_in + length = "
                f"{self.sequence.total}] (a larger period would drop steps)",
            ),
            (self.replay.num_shards >= 1, "replay.num_shards must be >= 1"),
            (self.replay.capacity >= self.learner.batch_size, "replay.capacity must be >= learner.batch_size"),
            (0.0 <= self.replay.alpha <= 2.0, "replay.alpha must be in [0, 2]"),
            (0.0 <= self.replay.beta_start <= 1.0 and 0.0 <= self.replay.beta_end <= 1.0,
             "replay.beta_start and replay.beta_end must be in [0, 1]"),
            (0.0 <= self.replay.priority_eta <= 1.0, "replay.priority_eta must be in [0, 1]"),
            (self.replay.min_size >= 1, "replay.min_size must be >= 1"),
            (self.replay.min_size <= self.replay.capacity, "replay.min_size must be <= replay.capacity"),
            (self.replay.samples_per_insert >= 0, "replay.samples_per_insert must be >= 0"),
            (self.replay.max_inflight_inserts >= 1, "replay.max_inflight_inserts must be >= 1"),
            (self.learner.batch_size >= 1, "learner.batch_size must be >= 1"),
            (0.0 <= self.learner.online_fraction <= 1.0, "learner.online_fraction must be in [0, 1]"),
            (self.learner.lr > 0, "learner.lr must be > 0"),
            (0.0 <= self.learner.discount <= 1.0, "learner.discount must be in [0, 1]"),
            (self.learner.num_learners >= 1, "learner.num_learners must be >= 1"),
            (self.learner.publish_every >= 1, "learner.publish_every must be >= 1"),
            (self.learner.max_policy_lag >= 0, "learner.max_policy_lag must be >= 0"),
            (self.actor.num_actors >= 1, "actor.num_actors must be >= 1"),
            (self.env.vectorization == "inline" or self.env.num_workers >= 1,
             "env.num_workers must be >= 1 with env.vectorization=subprocess"),
            (self.env.vectorization == "inline" or self.env.num_envs % self.env.num_workers == 0,
             f"env.num_envs ({self.env.num_envs}) must be a multiple of env.num_workers "
             f"({self.env.num_workers}) with env.vectorization=subprocess"),
            (self.model.hidden_size >= 1, "model.hidden_size must be >= 1"),
            (self.model.core != "hcam" or min(self.model.hcam_chunk, self.model.hcam_chunks, self.model.hcam_topk,
                                              self.model.hcam_heads) >= 1,
             "model.hcam_chunk, hcam_chunks, hcam_topk and hcam_heads must be >= 1"),
            (self.model.core != "hcam" or self.model.hidden_size % max(self.model.hcam_heads, 1) == 0,
             f"model.hidden_size ({self.model.hidden_size}) must be a multiple of model.hcam_heads "
             f"({self.model.hcam_heads})"),
            *self._bonus_checks(),
            (not self.learner.reconstruction_keys or self.learner.reconstruction_cost > 0,
             "learner.reconstruction_keys is set but learner.reconstruction_cost is 0: the loss is off; set the cost "
             "> 0 to switch it on"),
            (self.runtime.total_env_steps > 0, "runtime.total_env_steps must be > 0"),
            (self.runtime.placement_timeout_s >= 0, "runtime.placement_timeout_s must be >= 0 (0 = no limit)"),
            (self.actor.num_cpus >= 0, "actor.num_cpus must be >= 0 (0 = 1 + env workers)"),
            (self.learner.num_cpus >= 0 and self.replay.num_cpus >= 0,
             "learner.num_cpus and replay.num_cpus must be >= 0"),
            (self.runtime.mode == "ray" or self.learner.num_learners == 1,
             "learner.num_learners > 1 needs runtime.mode=ray"),
            (self.eval.every_updates >= 0, "eval.every_updates must be >= 0 (0 = no evaluation during training)"),
            (self.eval.episodes >= 1, "eval.episodes must be >= 1"),
            (self.eval.max_steps >= 1, "eval.max_steps must be >= 1"),
            (self.eval.stuck_steps >= 0, "eval.stuck_steps must be >= 0 (0 = no stuck detection)"),
            (self.eval.num_cpus >= 0, "eval.num_cpus must be >= 0"),
            *self._range_checks(),
            (0 < self.duration.w_min <= 1.0 <= self.duration.w_max,
             "duration.w_min must be in (0, 1] and duration.w_max >= 1"),
            (self.duration.kappa >= 0 and self.duration.bins >= 1 and self.duration.window_s >= 0
             and 0 < self.duration.dt_min < self.duration.dt_max,
             "duration: kappa >= 0, bins >= 1, window_s >= 0 and 0 < dt_min < dt_max are required"),
            (self.duration.mode != "inclusion" or self.runtime.mode == "local" or self.duration.window_s > 0,
             "duration.mode=inclusion with runtime.mode=ray needs duration.window_s > 0 (the Ray runtime does not "
             "feed launch counts to the learner yet, so the inclusion probability cannot be estimated)"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
        return self

    def advisories(self) -> list[str]:
        """Settings that are valid but will not do what they seem to ask for; ``distrl train`` prints them."""
        out = []
        spi = self.replay.samples_per_insert
        # Any online_fraction * samples_per_insert > 1 replays more than 1 - online_fraction while the learner
        # outpaces the actors; only "all fresh" is advised on: a smaller fraction with more samples per insert is
        # a choice for more replay (configs/fake_memory.yaml), and learner/fresh_fraction shows the share anyway.
        if self.learner.online_fraction == 1.0 and (spi > 1.0 or spi == 0):
            limit = "no limit" if spi == 0 else f"{spi:g} sequences per one inserted"
            out.append(
                f"learner.online_fraction=1 asks for fresh sequences only, but replay.samples_per_insert={spi:g} lets "
                f"the learner sample {limit}: while it outpaces the actors, the fresh ones run short and the rest of "
                "each batch is replayed (learner/fresh_fraction shows the share). For fresh sequences only, set "
                "replay.samples_per_insert=1.")
        if self.learner.kl_cost > 0 and self.learner.online_fraction == 0:
            out.append(
                f"learner.kl_cost={self.learner.kl_cost:g} penalises KL(mu || pi) on fresh sequences only, but "
                "learner.online_fraction=0 trains on replayed ones only: the penalty never applies. Set "
                "learner.online_fraction > 0, or leave kl_cost at 0.")
        if self.learner.ppo_clip_against == "proximal" and self.learner.ppo_clip == 0:
            out.append(
                "learner.ppo_clip_against=proximal measures the PPO clip's ratio against the proximal policy, but "
                "learner.ppo_clip=0 turns the clip off: the setting does nothing. Set learner.ppo_clip > 0 "
                "(for example 0.1).")
        return out

    def _bonus_checks(self) -> list[tuple[bool, str]]:
        """The bonus section: values in range, and combinations that cannot work named before anything starts."""
        b = self.bonus
        on = b.episodic != "none" or b.glob != "none"
        return [
            (b.coef > 0 or not on, "bonus.coef must be > 0 when a bonus is on"),
            (b.global_coef >= 0, "bonus.global_coef must be >= 0"),
            (b.ridge > 0, "bonus.ridge must be > 0"),
            (b.rnd_power > 0, "bonus.rnd_power must be > 0"),
            (b.noveld_scale >= 0, "bonus.noveld_scale must be >= 0 (0 = RND on s_{t+1})"),
            (b.rnd_lr > 0, "bonus.rnd_lr must be > 0"),
            (b.rnd_hidden >= 0, "bonus.rnd_hidden must be >= 0 (0 = by bonus.rnd_net)"),
            (b.count_power > 0, "bonus.count_power must be > 0"),
            (b.count_shards >= 1, "bonus.count_shards must be >= 1"),
            (b.e3b_lr > 0, "bonus.e3b_lr must be > 0"),
            (b.e3b_dim >= 0, "bonus.e3b_dim must be >= 0 (0 = model.hidden_size)"),
            (b.e3b_resym_every >= 0, "bonus.e3b_resym_every must be >= 0 (0 = never)"),
            (b.value_heads in (1, 2), f"bonus.value_heads must be 1 or 2, got {b.value_heads}"),
            (b.value_heads == 1 or on,
             "bonus.value_heads=2 trains an intrinsic value head on the exploration bonus, but no bonus is on "
             "(set bonus.episodic or bonus.glob)"),
            (self.model.separate_intrinsic_value == (b.value_heads == 2),
             f"bonus.value_heads={b.value_heads} and model.separate_intrinsic_value="
             f"{str(self.model.separate_intrinsic_value).lower()} disagree: the intrinsic value head is trained only "
             "with bonus.value_heads=2, and that needs the model to have it (set both, or neither)"),
            (0.0 <= b.intrinsic_gamma <= 1.0, "bonus.intrinsic_gamma must be in [0, 1]"),
            (b.intrinsic_adv_coef >= 0, "bonus.intrinsic_adv_coef must be >= 0"),
            (self.env.num_levels >= 0, "env.num_levels must be >= 0 (0 = a new level every episode)"),
            (b.glob != "count" or not self.env.observation_keys
             or self._count_key_obs() in (None, *self.env.observation_keys),
             f"bonus.glob=count counts bonus.count_key={b.count_key!r}, which needs observation key "
             f"{self._count_key_obs()!r}; add it to env.observation_keys {list(self.env.observation_keys)}"),
            (b.episodic != "count" or not self.env.observation_keys
             or self._count_key_obs() in (None, *self.env.observation_keys),
             f"bonus.episodic=count counts bonus.count_key={b.count_key!r}, which needs observation key "
             f"{self._count_key_obs()!r}; add it to env.observation_keys {list(self.env.observation_keys)}"),
        ]

    def _count_key_obs(self) -> str | None:
        """The observation key that bonus.count_key reads (None: 'obs' reads them all)."""
        return {"position": "blstats", "message": "message", "glyphs": "glyphs"}.get(self.bonus.count_key)

    def _range_checks(self) -> list[tuple[bool, str]]:
        """Per-field bounds (a value outside them would fail, or silently misbehave, deep inside a run), and
        every float finite."""
        lo: dict[str, tuple[float, bool]] = {  # key: (bound, strict) -> value > bound (strict) or >= bound
            "env.max_episode_steps": (0, False), "env.seed": (0, False), "env.frame_skip": (1, False),
            "env.frame_stack": (1, False), "env.noop_max": (0, False), "env.image_size": (1, False),
            "env.crop_size": (1, False), "env.fake_episode_len": (1, False), "env.num_workers": (0, False),
            "model.glyph_embedding_dim": (1, False), "model.num_core_layers": (1, False),
            "replay.epsilon": (0, False), "replay.samples_per_insert_tolerance": (0, False),
            "replay.checkpoint_every_s": (0, False), "replay.beta_steps": (0, False),
            "learner.eps": (0, False), "learner.grad_clip": (0, False), "learner.baseline_cost": (0, False),
            "learner.clip_rho": (0, True), "learner.clip_c": (0, True), "learner.clip_pg_rho": (0, True),
            "learner.reward_clip": (0, False), "learner.kl_trust_region": (0, False), "learner.ppo_clip": (0, False),
            "learner.kl_cost": (0, False), "learner.proximal_kl_cost": (0, False),
            "learner.reconstruction_cost": (0, False),
            "learner.proximal_period": (1, False),
            "learner.checkpoint_every": (0, False), "learner.threads": (1, False),
            "actor.weight_sync_every": (1, False), "actor.threads": (1, False),
            "runtime.num_cpus": (0, False), "runtime.max_wall_time_s": (0, False), "runtime.seed": (0, False),
            "runtime.actor_restarts": (0, False), "runtime.actor_stuck_timeout_s": (0, False),
            "runtime.shard_restarts": (0, False),
            "runtime.learner_restarts": (0, False), "runtime.learner_stuck_timeout_s": (0, False),
            "logging.log_every_s": (0, False),
        }
        out: list[tuple[bool, str]] = []
        for key, (bound, strict) in lo.items():
            section, name = key.split(".")
            v = getattr(getattr(self, section), name)
            out.append((v > bound if strict else v >= bound, f"{key} must be {'>' if strict else '>='} {bound}"))
        for key, v in (("env.sticky_action_prob", self.env.sticky_action_prob),
                       ("learner.rmsprop_alpha", self.learner.rmsprop_alpha)):
            out.append((0.0 <= v <= 1.0, f"{key} must be in [0, 1]"))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            for g in dataclasses.fields(section):
                v = getattr(section, g.name)
                if isinstance(v, float) and not math.isfinite(v):
                    out.append((False, f"{f.name}.{g.name} must be a finite number, got {v}"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, ignore: Sequence[str] = ("runtime", "logging", "eval")) -> str:
        """A stable JSON string of the config sections that define the model and learning problem.

        Checkpoints store it; resuming with a different fingerprint is refused. Evaluation settings are not part
        of it.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in ignore}
        d["actor"] = {k: v for k, v in d["actor"].items() if k not in ("device", "threads", "inference")}
        for section in ("actor", "learner", "replay"):  # Ray placement only
            d[section] = {k: v for k, v in d[section].items() if k != "num_cpus"}
        return json.dumps(d, sort_keys=True)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file, resolving ``include: [other.yaml, ...]`` (relative to the file) depth-first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: include cycle via {' -> '.join(str(p) for p in seen)}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (include: in {seen[-1]})" if seen else ""))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) file: {e}") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from e
    except RecursionError as e:  # deeply nested flow collections
        raise ConfigError(f"{path}: nested too deeply to parse") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise ConfigError(f"include: expected a file name or a list of file names, got {includes!r} (in {path})")
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _deep_merge(merged, _read_yaml(path.parent / inc, (*seen, path)))
    return _deep_merge(merged, _tag_source(data, str(path)))


class _Sourced(dict):
    """A dict that remembers which file its keys came from (for error messages)."""

    source: str = ""


def _tag_source(data: dict[str, Any], source: str) -> dict[str, Any]:
    out = _Sourced({k: _tag_source(v, source) if isinstance(v, dict) else v for k, v in data.items()})
    out.source = source
    return out


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check/convert one value to the annotated type; raise ConfigError naming key and source."""
    where = f" (in {source})" if source else ""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of fields, got {value!r}{where}")
        return _build(tp, value, key, getattr(value, "source", source))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and ("on" if value else "off") in allowed:  # YAML 1.1 reads off/on as bools
            value = "on" if value else "off"
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}{where}")
        return value
    if origin in (typing.Union, types.UnionType):
        errs = []
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return _coerce(value, arm, key, source)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(f"{key}: {value!r} matches none of {tp}{where}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}{where}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}{where}")
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}{where}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}{where}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}{where}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}{where}")
    raise ConfigError(f"{key}: unsupported config type {tp}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            where = f" (in {getattr(data, 'source', '') or source})" if (source or getattr(data, "source", "")) else ""
            raise ConfigError(f"unknown config key {key!r}{where}; valid keys here: {sorted(names)}")
        kwargs[k] = _coerce(v, hints[k], key, getattr(data, "source", "") or source)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _overrides_tree(overrides: Sequence[str]) -> dict[str, Any]:
    over: dict[str, Any] = {}
    for text in overrides:
        parts, value = _parse_override(text)
        node = over
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {p!r} is a value, not a section")
        node[parts[-1]] = value
    return _tag_source(over, "command line") if over else over


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Build an ExperimentConfig from the dataclass defaults, an optional YAML file and ``a.b=value`` overrides.

    The result is validated; any problem raises ConfigError naming the key and its source.
    """
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    merged = _deep_merge(data, _overrides_tree(overrides))
    cfg = _build(ExperimentConfig, merged, "", str(path) if path else "")
    return _validated(cfg, [str(Path(path).resolve())] if path else [], overrides)


QUICKSTART: dict[str, Any] = {
    "env": {"observation_keys": ["glyphs_crop", "blstats"]},
    "model": {"encoder": "nethack_small", "hidden_size": 128, "glyph_embedding_dim": 16},
    "replay": {"compress_obs": True},
    "learner": {"batch_size": 8},
    "eval": {"every_updates": 1000},
}
"""The quickstart (``distrl train`` with no config; ``configs/quickstart.yaml`` writes it out, and says why): the
dataclass defaults with the small MiniHack model, its observations compressed in replay, batches of 8 sequences,
evaluated every 1000 learner updates and at the end."""


def quickstart_config(overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The quickstart (:data:`QUICKSTART` on the defaults) with ``a.b=value`` overrides; validated. QUICKSTART goes
    in as overrides before the user's, so an error in theirs names the command line as its source."""
    own = [f"{section}.{key}={json.dumps(value)}"
           for section, keys in QUICKSTART.items() for key, value in keys.items()]
    return load_config(None, [*own, *overrides])


def _validated(cfg: ExperimentConfig, files: Sequence[str], overrides: Sequence[str]) -> ExperimentConfig:
    """``cfg.validate()``, its error naming where the values came from (the files and the command line)."""
    try:
        return cfg.validate()
    except ConfigError as e:
        sources = [*files, *(["command-line overrides"] if overrides else [])]
        if not sources:
            raise
        raise ConfigError(f"{e} (config from {' + '.join(sources)})") from None


def apply_overrides(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``cfg`` with ``a.b=value`` overrides applied on top (validated)."""
    merged = _deep_merge(_tag_source(to_plain(cfg.to_dict()), ""), _overrides_tree(overrides))
    return _build(ExperimentConfig, merged, "", "").validate()


def config_from_dict(data: Mapping[str, Any], source: str = "") -> ExperimentConfig:
    """Rebuild a config from ``to_dict()`` output (e.g. one stored in a run directory). Validated."""
    return _build(ExperimentConfig, _tag_source(dict(data), source), "", source).validate()


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_plain(cfg.to_dict()), sort_keys=False))


def to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return [to_plain(v) for v in x]
    return x
