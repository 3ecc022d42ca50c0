"""Exploration bonuses (ALGORITHMS.md §1): the math, free of env, actor, learner and model code.

* :mod:`~distrl.bonuses.keys`: stable 64-bit state keys (position, message, glyphs, whole observation) that
  count bonuses count.
* :mod:`~distrl.bonuses.episodic`: actor-side episodic bonuses, per env slot, reset at episode end: E3B
  (batched Sherman-Morrison) and episodic counts. :func:`distrl.actors.bonus.build_episodic_bonus` builds the
  one ``bonus.episodic`` names (its registry, ``EPISODIC_BONUSES``, is where a new one is added).
* :mod:`~distrl.bonuses.e3b`: E3B's inverse-dynamics training of its embedding (the learner extra "e3b",
  :mod:`distrl.learners.e3b_extra`).
* :mod:`~distrl.bonuses.global_bonus`, :mod:`~distrl.bonuses.counts`, :mod:`~distrl.bonuses.combine`:
  learner-side global bonuses (RND, NovelD, global counts) and the combination with the episodic one.

Nothing is imported here, so importing one module does not pull in the others.
"""
