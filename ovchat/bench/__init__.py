"""``ovchat bench``: measured speed and quality, never asserted.

- :mod:`~ovchat.bench.speed`: the page's path against its peers, side by side in one run;
- :mod:`~ovchat.bench.scaling`: TTFT, decode speed and memory against prompt length;
- :mod:`~ovchat.bench.quality`: perplexity of each weight format on a text ovchat ships (``quality.txt``);
- :mod:`~ovchat.bench.runners`: each engine behind one runner, in its own worker process;
- :mod:`~ovchat.bench.workers`: the bench's end of those processes;
- :mod:`~ovchat.bench.prompts`, :mod:`~ovchat.bench.report`: the chats sent, the tables, JSON and charts;
- :mod:`~ovchat.bench.command`: the command's flags.

The bench uses only ovchat's public API (``Engine``, its backends, ``compile_properties``), so
it measures exactly what the page runs. Nothing here is imported by the product.
"""
