"""The sampling lab: what the sampling settings do, shown rather than told.

:mod:`~ovchat.lab.sampling` is the arithmetic of one step (pure numpy, openvino-genai's order);
:mod:`~ovchat.lab.explorer` runs it on the model's next-token logits; :mod:`~ovchat.lab.compare`
samples one prompt under several settings with fixed seeds; :mod:`~ovchat.lab.presets` holds the
named settings; :mod:`~ovchat.lab.shading` draws a reply shaded by its tokens' probabilities. The page
(``lab_streamlit.py``) and ``ovchat explore`` are their front ends; nothing here imports Streamlit.
"""
