"""Evaluation: run episodes with a policy and report return, success and whether a greedy policy got stuck.

:class:`Evaluator` is a plain class (one process, no Ray): its own single envs with their own seeds (never the
training envs), its own agent, and its own random generator for sampling, so an evaluation in the middle of a
local run changes nothing in the training that follows. The runtimes use it during training (every
``eval.every_updates`` learner updates; the Ray runtime hosts it in an actor, :mod:`distrl.runtime.ray_eval`),
and ``distrl eval CHECKPOINT`` through :func:`evaluate`, which rebuilds env and model from the checkpoint's
stored config.

* **Sampled by default**: actions are drawn from the policy, as in training (the NetHack and Atari baselines
  evaluate stochastic policies). ``greedy=True`` takes the argmax, which can get stuck: on MiniHack-Room a
  trained agent that reaches the goal in 12 sampled steps can bump into a wall for ever when greedy.
* **Stuck detection** (greedy only): when the same (observation, action) pair, or a cycle of up to
  :data:`MAX_CYCLE` pairs, has repeated for ``eval.stuck_steps`` steps, the episode ends there and counts in
  ``EvalResult.stuck_episodes``, instead of running on until the time limit.
* **Video**: with ``video_path``, the first episode is recorded from ``env.render()`` (one frame per step,
  the first after reset) through a :class:`distrl.envs.video.VideoWriter`, frame by frame as it is played (mp4,
  or GIF without PyAV).
* Atari with ``env.terminal_on_life_loss``: a life loss ends only the learning episode; evaluation plays on to
  the game's end and reports the full-game score.
* **Heartbeat**: :meth:`Evaluator.in_env_for` says how long the current env call (build, reset, step, render)
  has been running, from any thread; env actor 0 adds it to its own heartbeat, so an evaluation env that hangs
  there gets that actor restarted like a hung training env (``runtime.actor_stuck_timeout_s``), and an evaluator
  actor answers it to the driver, which kills a hung one (:class:`distrl.runtime.ray_eval.EvalDriver`).

Usage::

    ev = Evaluator(cfg, spec, seed=eval_seed(cfg))
    result = ev.run(weights, episodes=5)                     # weights: distrl.types.PolicyWeights
    result = ev.run(weights, 5, greedy=True, video_path=Path("runs/r/videos/eval_20.mp4"))
    evaluate("runs/r/checkpoints/learner.pt", episodes=20)   # what `distrl eval` calls
"""

from __future__ import annotations

import collections
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from distrl.config import ExperimentConfig, apply_overrides, config_from_dict
from distrl.envs.base import EnvSpec
from distrl.envs.registry import env_spec, make_env
from distrl.models.numpy_kernels import KernelPolicy, kernel_policy_applies
from distrl.types import EvalResult, PolicyWeights

MAX_CYCLE = 4
"""Longest cycle of (observation, action) pairs the stuck detection recognises (1 = one pair repeating)."""


SUCCESS_FAMILIES = ("minihack", "miniworld", "habitat", "memory")
"""Env families whose episodes report success (others may too: then an episode's report says so)."""


def eval_seed(cfg: ExperimentConfig) -> int:
    """The evaluation envs' base seed for a config: derived from ``env.seed`` but apart from every training
    actor's seeds (episode ``i`` of an evaluation resets with ``eval_seed + i``, so successive evaluations of a
    run play the same episodes)."""
    ss = np.random.SeedSequence(entropy=int(cfg.env.seed), spawn_key=(0xE7A1,))
    return int(ss.generate_state(1)[0] & 0x3FFFFFFF)


def obs_key(obs: dict[str, Any]) -> bytes:
    """A short digest of an observation dict (every key's dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(obs):
        a = np.ascontiguousarray(obs[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()


class RepeatDetector:
    """Says when the last ``window`` steps repeat one key or a cycle of up to ``max_cycle`` keys.

    ``runs[p]`` counts the consecutive steps whose key equals the key ``p`` steps earlier; the last ``window``
    steps are ``p``-periodic when ``runs[p] >= window - p``. O(max_cycle) per step.

    Usage::

        det = RepeatDetector(window=20)
        det.step((obs_key(obs), action))     # True once the same pair (or a short cycle) filled the window
        det.reset()                          # at an episode start
    """

    def __init__(self, window: int, max_cycle: int = MAX_CYCLE) -> None:
        self.window = int(window)
        # a cycle must show at least twice in the window to count
        self.max_cycle = max(1, min(int(max_cycle), self.window // 2))
        self.reset()

    def reset(self) -> None:
        self._recent: collections.deque[Any] = collections.deque(maxlen=self.max_cycle)
        self._runs = [0] * (self.max_cycle + 1)

    def step(self, key: Any) -> bool:
        if self.window <= 0:
            return False
        stuck = False
        n = len(self._recent)
        for p in range(1, self.max_cycle + 1):
            if p <= n and self._recent[-p] == key:
                self._runs[p] += 1
                stuck = stuck or self._runs[p] >= self.window - p
            else:
                self._runs[p] = 0
        self._recent.append(key)
        return stuck


class Evaluator:
    """Runs evaluation episodes with given weights (see the module doc). One process; no Ray.

    ``seed``: base seed of the episodes (default :func:`eval_seed`). ``cfg.eval`` gives the per-episode step
    cap (``max_steps``) and the stuck window (``stuck_steps``).

    ``kernels=True`` (the Ray runtime's evaluator) plays through
    :class:`~distrl.models.numpy_kernels.KernelPolicy` where the env actors do
    (:func:`~distrl.models.numpy_kernels.kernel_policy_applies`), sampling with its own NumPy generator: the
    process then never loads torch. Otherwise it plays ``Agent.act`` (:attr:`agent`)."""

    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec | None = None, seed: int | None = None, *,
                 kernels: bool = False) -> None:
        self.cfg = cfg
        self.spec = spec if spec is not None else env_spec(cfg.env)
        self.seed = eval_seed(cfg) if seed is None else int(seed)
        self.kernels = kernels and kernel_policy_applies(cfg, self.spec)
        self.agent: Any = None
        self.policy: KernelPolicy | None = None
        if self.kernels:
            self.policy = KernelPolicy(cfg.model, self.spec, seed=self.seed)
        else:
            import torch

            from distrl.models.agent import build_agent

            # Building a model draws its initial weights from torch's global generator: fork it, so an evaluator
            # created in the middle of a local run leaves the run's random stream as it was.
            with torch.random.fork_rng(devices=[]):
                self.agent = build_agent(cfg.model, self.spec)
            self.agent.eval()
            self._gen = torch.Generator().manual_seed(self.seed)
        self._envs: dict[bool, Any] = {}  # render flag -> env (built on first use)
        self._in_env_since: float | None = None  # time.monotonic() when the env call now running began

    def in_env_for(self) -> float:
        """Seconds the current env call (build, reset, step, render) has been running; 0 between calls. Read
        from another thread as a heartbeat."""
        since = self._in_env_since
        return 0.0 if since is None else time.monotonic() - since

    def _in_env(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._in_env_since = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self._in_env_since = None

    def _env(self, render: bool) -> Any:
        if render not in self._envs:
            self._envs[render] = (
                make_env(self.cfg.env, self.seed, render=True) if render else make_env(self.cfg.env, self.seed)
            )
        return self._envs[render]

    def _initial_state(self) -> Any:
        return self.policy.initial_state(1) if self.policy is not None else self.agent.initial_state(1)

    def _act(self, obs: dict[str, Any], core: Any, greedy: bool) -> tuple[int, Any]:
        """(action, next core state) for one observation. Sampled with the evaluator's own generator (the
        global one is the training's)."""
        if self.policy is not None:
            out = self.policy.act({k: np.asarray(v)[None] for k, v in obs.items()}, core, greedy=greedy)
            return int(out.action[0]), out.state
        import torch

        with torch.no_grad():
            out = self.agent.act({k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items()}, core,
                                 greedy=True)
            logits = out.logits  # [1, A]
            if greedy:
                return int(logits[0].argmax()), out.state
            probs = torch.softmax(logits[0].float(), dim=-1)
            return int(torch.multinomial(probs, 1, generator=self._gen)), out.state

    def run(
        self,
        weights: PolicyWeights,
        episodes: int,
        greedy: bool = False,
        video_path: str | Path | None = None,
    ) -> EvalResult:
        """Play ``episodes`` episodes with ``weights``; record the first one to ``video_path`` when given."""
        if episodes < 1:
            raise ValueError(f"Evaluator.run: episodes must be >= 1, got {episodes}")
        (self.policy if self.policy is not None else self.agent).load_state_dict(weights.policy)
        ec = self.cfg.eval
        detector = RepeatDetector(ec.stuck_steps if greedy else 0)
        returns: list[float] = []
        lengths: list[int] = []
        successes: list[float | None] = []
        stuck = 0
        writer = None
        if video_path is not None:
            from distrl.envs.video import VideoWriter

            writer = VideoWriter(video_path)  # frames are written as they come (a Pong game is thousands)
        try:
            for ep in range(episodes):
                record = writer is not None and ep == 0
                env = self._in_env(self._env, record)
                obs, _ = self._in_env(env.reset, seed=self.seed + ep)
                if record:
                    writer.add(self._in_env(env.render), "reset")
                core = self._initial_state()
                detector.reset()
                total, n, info, success, was_stuck = 0.0, 0, {}, None, False
                while n < ec.max_steps:
                    action, core = self._act(obs, core, greedy)
                    key = (obs_key(obs), action) if greedy else None
                    obs, r, term, trunc, info = self._in_env(env.step, action)
                    total += float(r)
                    n += 1
                    stuck_now = greedy and not (term or trunc) and detector.step(key)
                    if record:
                        label = f"a={action} r={float(r):+.2f}" + (" STUCK" if stuck_now else "")
                        writer.add(self._in_env(env.render), label)
                    if term or trunc:
                        if info.get("report", True):
                            success = info.get("success")
                            break
                        # Atari life loss with terminal_on_life_loss: a learning-only end, the game goes on.
                        obs, _ = self._in_env(env.reset)
                        core = self._initial_state()
                        detector.reset()
                        continue
                    if stuck_now:
                        was_stuck = True
                        break
                stuck += was_stuck
                returns.append(float(info.get("episode_return", total)))  # Atari: the full game's score
                lengths.append(n)
                successes.append(None if success is None else float(success))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        # Episodes cut short (stuck, or at eval.max_steps) report nothing: they failed, in envs that report success.
        reports = any(s is not None for s in successes) or self.spec.family in SUCCESS_FAMILIES
        success_rate = float(np.mean([s or 0.0 for s in successes])) if reports else None
        video = None if writer is None else str(writer.close())
        return EvalResult(
            env=self.cfg.env.name,
            episodes=episodes,
            return_mean=float(np.mean(returns)),
            return_std=float(np.std(returns)),
            length_mean=float(np.mean(lengths)),
            success_rate=success_rate,
            learner_version=int(weights.version),
            greedy=bool(greedy),
            stuck_episodes=int(stuck),
            video=video,
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def describe(result: EvalResult, stuck_steps: int = 0) -> str:
    """A one-line human summary of ``result`` (``distrl eval`` prints it after the JSON)."""
    mode = "greedy (argmax) actions" if result.greedy else "sampled actions"
    parts = [
        f"{result.env}: {result.episodes} episodes, {mode}, learner version {result.learner_version}: "
        f"return {result.return_mean:.3f} ± {result.return_std:.3f}"
    ]
    if result.success_rate is not None:
        parts.append(f"success {result.success_rate:.2f}")
    parts.append(f"{result.length_mean:.1f} steps per episode")
    line = ", ".join(parts)
    if result.stuck_episodes:
        window = f" for {stuck_steps} steps" if stuck_steps else ""
        line += (
            f". STUCK: {result.stuck_episodes} of {result.episodes} greedy episodes repeated the same observation "
            f"and action{window} and were cut short; the agent was trained with sampled actions, evaluate "
            "without --greedy to see it act as trained"
        )
    if result.video:
        line += f". Video: {result.video}"
    return line


def load_policy(checkpoint: str | Path, overrides: list[str] | None = None) -> tuple[ExperimentConfig,
                                                                                   PolicyWeights]:
    """A learner checkpoint's stored config (with ``a.b=value`` overrides on top) and its policy weights."""
    from distrl.learners.learner import load_checkpoint_file

    state = load_checkpoint_file(checkpoint)
    stored = state.get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"{checkpoint}: checkpoint has no stored config; cannot rebuild the agent")
    cfg = config_from_dict(stored, source=str(checkpoint))
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg, PolicyWeights(version=int(state.get("version", -1)), policy=state["model"])


def evaluate_policy(
    cfg: ExperimentConfig,
    weights: PolicyWeights,
    episodes: int = 10,
    greedy: bool = False,
    video: str | Path | None = None,
    seed: int | None = None,
) -> EvalResult:
    """One evaluation of ``weights`` with a fresh :class:`Evaluator` (closed afterwards)."""
    evaluator = Evaluator(cfg, seed=seed)
    try:
        return evaluator.run(weights, episodes, greedy=greedy, video_path=video)
    finally:
        evaluator.close()


def evaluate(
    checkpoint: str | Path,
    episodes: int = 10,
    greedy: bool = False,
    video: str | Path | None = None,
    overrides: list[str] | None = None,
    seed: int | None = None,
) -> EvalResult:
    """Rebuild the agent and env from a learner checkpoint's stored config and evaluate its weights
    (``distrl eval``). ``overrides`` (``a.b=value``) apply on top of the stored config, e.g. another
    ``env.max_episode_steps`` or ``eval.stuck_steps``. ``seed``: base episode seed (default :func:`eval_seed`)."""
    cfg, weights = load_policy(checkpoint, overrides)
    return evaluate_policy(cfg, weights, episodes, greedy=greedy, video=video, seed=seed)
