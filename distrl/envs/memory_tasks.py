"""Symbolic memory tasks (NumPy only, a few µs per step): what must be kept is shown once, long before it is
asked for. Written from the task descriptions of HCAM's paper (Lampinen et al. 2021: Ballet, object recall);
see ALGORITHMS.md §2.7.

* ``Ballet-<N>-<D>`` (:class:`BalletEnv`): a 7 x 7 room, the agent in the centre and ``N`` (1-8) dancers on
  eight fixed places two cells away, each with a distinct identity (one of 8). In turn, after ``D`` quiet steps,
  each dancer performs its dance: ``DANCE_LEN`` steps in which it steps off its place in a direction and back,
  a different sequence of directions for each of the 8 dances (dancers get distinct dances). ``room`` holds
  the agent's plane, one plane per identity and an occupancy plane (every dancer, whoever it is), so the
  performing dancer is seen off its place; ``performing`` names the dance being performed (one-hot, index 0:
  nobody dances). The dance is shown as a symbol where the paper's agent recognises it from the dancer's
  motion: with only each step's direction shown, neither core got above chance on Ballet-2-0 within our CPU
  budget (BENCHMARKS.md, "Ballet"), so the symbolic form tests what the task is for: binding each dance to its
  dancer and keeping that. The agent's actions do nothing until the dances are over; then, after ``D`` more
  quiet steps, ``instruction`` names one of the performed dances and the agent has ``TEST_STEPS`` steps to
  walk (8 directions + stay) onto the dancer that performed it. Stepping onto a dancer ends the episode:
  reward 1 if it is that dancer, 0 otherwise (also 0 when time runs out). Chance level (``info["chance"]``):
  ``1 / N``, for an agent that walks to a dancer picked at random (every dancer is two moves away; an agent
  that reaches none in time scores 0). ``Ballet-<N>-<D1>to<D2>`` draws each episode's ``D`` uniformly from
  ``D1..D2``: a mix of levels in one run (``info["delay"]`` on the last step says which).
* ``Recall-<K>-<D>`` (:class:`RecallEnv`): step 0 shows an object at one of ``K`` places (``cue``), then
  ``D`` distractor steps show a place drawn uniformly from all ``K`` in ``distractor`` each step (independent
  of the cue: the cue's place shows up among them as often as any other, so they carry no information about
  it), then ``query`` asks where the object was: the action (one of K places) there ends the episode, reward 1
  if it names the cue's place. Actions before the query do nothing. Chance level: ``1 / K``. (Distractors
  drawn from the places other than the cue's leaked it: the place never shown in D >> K distractor steps is
  the cue's, and an attention memory learnt that instead of the cue; see
  ``test_recall_distractors_do_not_leak_the_cue``.)

Both report ``info["success"]`` (the reward) and ``info["chance"]`` on the step that ends an episode.
Observations are small int8 arrays (the MLP encoder casts them as they are).

Usage::

    env = make(EnvConfig(name="Ballet-2-16"), seed=0)
    obs, info = env.reset()                 # obs["room"] [10, 7, 7] int8, obs["instruction"] [8], ...
    obs, r, term, trunc, info = env.step(0)
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from distrl.config import EnvConfig
from distrl.envs.base import ArraySpec, EnvSpec, check_discrete_action

Obs = dict[str, np.ndarray]

ROOM = 7
CENTRE = (3, 3)
PLACES = ((1, 1), (1, 3), (1, 5), (3, 1), (3, 5), (5, 1), (5, 3), (5, 5))
"""The eight dancer places (row, col), two cells from the centre."""
IDENTITIES = 8
DIRS = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""Dance step directions: N, E, S, W."""
DANCE_LEN = 4
DANCES = (
    (0, 1, 2, 3), (0, 3, 2, 1), (2, 1, 0, 3), (2, 3, 0, 1),
    (1, 1, 3, 3), (3, 3, 1, 1), (0, 0, 2, 2), (2, 2, 0, 0),
)
"""The eight dances: per dance step, the direction in which the dancer stands off its place for that step (it
is back home on the next). All differ in their first two steps."""
AGENT_MOVES = ((0, 0), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
"""Ballet actions: stay, then the 8 directions clockwise from north."""
TEST_STEPS = 8

_NAME = re.compile(r"^(Ballet|Recall)-(\d+)-(\d+)(?:to(\d+))?$")


def parse_levels(name: str) -> tuple[str, int, int, int]:
    """``"Ballet-2-16"`` -> ``("Ballet", 2, 16, 16)``; ``"Ballet-2-4to16"`` -> ``("Ballet", 2, 4, 16)`` (each
    episode's delay drawn uniformly from 4..16). ValueError naming the id and the expected form."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"env.name {name!r}: memory task ids are Ballet-<dancers>-<delay>, "
                         f"Ballet-<dancers>-<min delay>to<max delay> or Recall-<places>-<delay>")
    kind, a, lo = m.group(1), int(m.group(2)), int(m.group(3))
    hi = int(m.group(4)) if m.group(4) is not None else lo
    if kind == "Ballet" and not 1 <= a <= len(PLACES):
        raise ValueError(f"env.name {name!r}: Ballet needs 1-{len(PLACES)} dancers, got {a}")
    if kind == "Recall" and a < 2:
        raise ValueError(f"env.name {name!r}: Recall needs >= 2 places, got {a}")
    if kind == "Recall" and hi != lo:
        raise ValueError(f"env.name {name!r}: a range of delays is offered for Ballet only")
    if hi < lo:
        raise ValueError(f"env.name {name!r}: the delay range {lo}to{hi} is empty (min > max)")
    return kind, a, lo, hi


def parse_name(name: str) -> tuple[str, int, int]:
    """``"Ballet-2-16"`` -> ``("Ballet", 2, 16)``: a level with one delay (a range of delays is a ValueError);
    ValueError naming the id and the expected form."""
    kind, a, lo, hi = parse_levels(name)
    if hi != lo:
        raise ValueError(f"env.name {name!r}: names a range of delays, not one level")
    return kind, a, lo


class BalletEnv:
    """Ballet: remember which dancer performed which dance (see the module doc).

    Usage::

        env = BalletEnv(dancers=2, delay=16, seed=0)
        obs, _ = env.reset()
        while True:
            obs, r, term, trunc, info = env.step(0)
            if term or trunc: break                  # info["success"], info["chance"] == 0.5
    """

    copy_obs = True

    def __init__(self, dancers: int = 2, delay: int = 16, max_episode_steps: int = 0, seed: int = 0,
                 max_delay: int | None = None) -> None:
        if not 1 <= dancers <= len(PLACES) or delay < 0:
            raise ValueError(f"BalletEnv: need 1 <= dancers <= {len(PLACES)} and delay >= 0, got {dancers}, {delay}")
        if max_delay is not None and max_delay < delay:
            raise ValueError(f"BalletEnv: max_delay {max_delay} < delay {delay}")
        self.dancers, self.delay = dancers, delay
        self.min_delay, self.max_delay = delay, delay if max_delay is None else max_delay
        """Each episode's delay is drawn uniformly from min_delay..max_delay (one level when they are equal)."""
        self.watch_len = dancers * (delay + DANCE_LEN) + delay
        """Steps before the instruction (dances and quiet steps); the test phase follows."""
        self.max_episode_steps = max_episode_steps
        self._rng = np.random.default_rng(seed)
        self._room = np.zeros((IDENTITIES + 2, ROOM, ROOM), dtype=np.int8)
        self._done = True
        self._t = 0

    @staticmethod
    def make_spec(name: str) -> EnvSpec:
        i8 = np.dtype(np.int8)
        return EnvSpec(
            name=name,
            obs={
                "room": ArraySpec((IDENTITIES + 2, ROOM, ROOM), i8),
                "performing": ArraySpec((len(DANCES) + 1,), i8),
                "instruction": ArraySpec((len(DANCES),), i8),
            },
            num_actions=len(AGENT_MOVES),
            family="memory",
        )

    @property
    def chance(self) -> float:
        return 1.0 / self.dancers

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[Obs, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        rng = self._rng
        self._places = [PLACES[i] for i in rng.choice(len(PLACES), self.dancers, replace=False)]
        self._ids = rng.choice(IDENTITIES, self.dancers, replace=False)
        self._dances = rng.choice(len(DANCES), self.dancers, replace=False)  # dancer i performs dance _dances[i]
        self._target = int(rng.integers(self.dancers))
        if self.max_delay != self.min_delay:
            self.delay = int(rng.integers(self.min_delay, self.max_delay + 1))
            self.watch_len = self.dancers * (self.delay + DANCE_LEN) + self.delay
        self._agent = CENTRE
        self._t = 0
        self._done = False
        return self._obs(), {}

    def _dance_step(self) -> tuple[int, int] | None:
        """(dancer, dance step) performing at the current time, or None."""
        t = self._t
        if t >= self.dancers * (self.delay + DANCE_LEN):
            return None
        i, r = divmod(t, self.delay + DANCE_LEN)
        return (i, r - self.delay) if r >= self.delay else None

    def _obs(self) -> Obs:
        room = self._room
        room.fill(0)
        room[0, self._agent[0], self._agent[1]] = 1
        performing = np.zeros(len(DANCES) + 1, dtype=np.int8)
        ds = self._dance_step()
        for i, ((r, c), ident) in enumerate(zip(self._places, self._ids)):
            if ds is not None and ds[0] == i:
                d = DANCES[self._dances[i]][ds[1]]
                r, c = r + DIRS[d][0], c + DIRS[d][1]
                performing[1 + self._dances[i]] = 1
            room[1 + ident, r, c] = 1
            room[IDENTITIES + 1, r, c] = 1
        instr = np.zeros(len(DANCES), dtype=np.int8)
        if self._t >= self.watch_len:
            instr[self._dances[self._target]] = 1
        return {"room": room.copy(), "performing": performing, "instruction": instr}

    def step(self, action: Any) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("BalletEnv.step after the episode ended (or before reset); call reset()")
        a = check_discrete_action(action, len(AGENT_MOVES), "BalletEnv")
        reward, terminated = 0.0, False
        if self._t >= self.watch_len:
            dr, dc = AGENT_MOVES[a]
            r = min(max(self._agent[0] + dr, 0), ROOM - 1)
            c = min(max(self._agent[1] + dc, 0), ROOM - 1)
            self._agent = (r, c)
            if (r, c) in self._places:
                terminated = True
                reward = 1.0 if self._places.index((r, c)) == self._target else 0.0
            elif self._t + 1 >= self.watch_len + TEST_STEPS:
                terminated = True  # out of time: the task ends as failed (not a time limit to bootstrap through)
        self._t += 1
        truncated = not terminated and 0 < self.max_episode_steps <= self._t
        self._done = terminated or truncated
        info: dict[str, Any] = {}
        if self._done:
            info = {"success": reward, "chance": self.chance, "delay": self.delay}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """RGB ``[7 * 12, 7 * 12, 3]``: the room, the agent white, each identity its own colour."""
        colours = np.array([(255, 255, 255), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
                            (0, 114, 178), (213, 94, 0), (204, 121, 167), (160, 160, 160)], dtype=np.uint8)
        img = np.full((ROOM, ROOM, 3), 30, dtype=np.uint8)
        room = self._obs()["room"]
        for k in range(IDENTITIES + 1):  # the agent and the identities (the occupancy plane adds nothing here)
            img[room[k] > 0] = colours[k]
        if self._t >= self.watch_len:
            img[0, :, :] = 90  # top wall lights up in the test phase
        return np.repeat(np.repeat(img, 12, axis=0), 12, axis=1)

    def close(self) -> None:
        self._done = True


class RecallEnv:
    """Passive recall: see where an object is, sit through distractors, then name the place.

    Usage::

        env = RecallEnv(places=4, delay=60, seed=0)
        obs, _ = env.reset(); place = int(obs["cue"].argmax())
        for _ in range(61): obs, r, term, _, info = env.step(place)   # r == 1.0 on the last step
    """

    copy_obs = True

    def __init__(self, places: int = 4, delay: int = 16, max_episode_steps: int = 0, seed: int = 0) -> None:
        if places < 2 or delay < 0:
            raise ValueError(f"RecallEnv: need places >= 2 and delay >= 0, got {places}, {delay}")
        self.places, self.delay = places, delay
        self.max_episode_steps = max_episode_steps
        self._rng = np.random.default_rng(seed)
        self._done = True
        self._t = 0
        self._cue = 0
        self._distractor = 0

    @staticmethod
    def make_spec(name: str, places: int) -> EnvSpec:
        i8 = np.dtype(np.int8)
        return EnvSpec(
            name=name,
            obs={"cue": ArraySpec((places,), i8), "distractor": ArraySpec((places,), i8),
                 "query": ArraySpec((1,), i8)},
            num_actions=places,
            family="memory",
        )

    @property
    def chance(self) -> float:
        return 1.0 / self.places

    def _obs(self) -> Obs:
        cue = np.zeros(self.places, dtype=np.int8)
        dis = np.zeros(self.places, dtype=np.int8)
        if self._t == 0:
            cue[self._cue] = 1
        elif self._t <= self.delay:
            dis[self._distractor] = 1
        return {"cue": cue, "distractor": dis, "query": np.array([self._t == self.delay + 1], dtype=np.int8)}

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[Obs, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._cue = int(self._rng.integers(self.places))
        self._t = 0
        self._done = False
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("RecallEnv.step after the episode ended (or before reset); call reset()")
        a = check_discrete_action(action, self.places, "RecallEnv")
        judged = self._t == self.delay + 1
        reward = 1.0 if judged and a == self._cue else 0.0
        self._t += 1
        if 1 <= self._t <= self.delay:  # a distractor: any place, the cue's included (independent of the cue)
            self._distractor = int(self._rng.integers(self.places))
        terminated = judged
        truncated = not terminated and 0 < self.max_episode_steps <= self._t
        self._done = terminated or truncated
        info: dict[str, Any] = {"success": reward, "chance": self.chance} if self._done else {}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        from distrl.envs.fake import render_bars

        return render_bars(self._obs())

    def close(self) -> None:
        self._done = True



def spec(cfg: EnvConfig) -> EnvSpec:
    """EnvSpec for a ``Ballet-*`` or ``Recall-*`` id."""
    kind, a, _, _ = parse_levels(cfg.name)
    return BalletEnv.make_spec(cfg.name) if kind == "Ballet" else RecallEnv.make_spec(cfg.name, a)


def make(cfg: EnvConfig, seed: int, render: bool = False) -> BalletEnv | RecallEnv:
    """The env named by ``cfg.name`` (``render`` accepted for the registry: both envs can always render)."""
    kind, a, lo, hi = parse_levels(cfg.name)
    if kind == "Ballet":
        return BalletEnv(dancers=a, delay=lo, max_delay=hi, max_episode_steps=cfg.max_episode_steps, seed=seed)
    return RecallEnv(places=a, delay=lo, max_episode_steps=cfg.max_episode_steps, seed=seed)
