"""Synthetic tabletop scenes, the data every side uses: the renderer (``render``), command layouts with ground
truth (``layouts``), the grounding and command evaluations (``evaluation``, ``command_eval``) and scene videos
(``video``). Torch-free; the model under test is always passed in."""
