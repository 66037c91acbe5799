"""The self-driving improvement loop (issue 23): feedback → train from the champion → gate →
shadow/canary → promote or roll back, as one object (docs/loops.md). Built: the state machine, the
decision rules, the recipe, the store, managing loops (``/api/loops``, ``studio loop``), the loop's
data from the raw tables (looks, triggers, the snapshot) and the runner that moves generations in
the scheduler's pass; not built yet: ``studio loop simulate`` and the UI page.

| module | job |
|---|---|
| ``states`` | the generation states, the one transition table, ``transition`` (pure) |
| ``stats`` | the decision rules: the confidence sequence, guardrails, SRM, ``decide``; the shadow sign test |
| ``spec`` | ``LoopSpec``, the recipe ``configs/loops/<name>.yaml`` |
| ``repository`` | loops and generations in the database; compare-and-set moves; looks; ``explain`` |
| ``control`` | what a person does: create (checked against the registry), pause, resume, cancel; promote, roll back, abort a generation |
| ``views`` | the shapes the API and the CLI show |
| ``looks`` | a canary ``Look`` rebuilt from the completion log, the feedback and the canary experiment |
| ``triggers`` | new data, schedule, drift, by hand, the cooldown: ``Fired`` with a reason |
| ``snapshot`` | a generation's preference snapshot at its cutoff, golden-set prompts dropped |
| ``runner`` | one pass: start triggered generations, step each active one from its stored state (training, retries) |
| ``runner_gate``, ``runner_traffic`` | the runner's gate step; its shadow, canary, promote and roll-back steps |
| ``actions`` | the runner's outside effects (``Actions``), and ``ServiceActions`` on the services |
"""
