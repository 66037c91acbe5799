"""The self-driving improvement loop (issue 23): feedback → train from the champion → gate →
shadow/canary → promote or roll back, as one object (docs/loops.md). This package holds its
foundation; the runner, the API, the CLI and the UI page are not built yet.

| module | job |
|---|---|
| ``states`` | the generation states, the one transition table, ``transition`` (pure) |
| ``stats`` | the decision rules: the confidence sequence, guardrails, SRM, ``decide``; the shadow sign test |
| ``spec`` | ``LoopSpec``, the recipe ``configs/loops/<name>.yaml`` |
| ``repository`` | loops and generations in the database; compare-and-set moves; looks; ``explain`` |
"""
