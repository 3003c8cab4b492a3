"""nbgrader's Execute preprocessor with a cap on the output a submission may produce.

The course config (`tito nbgrader setup`) puts `LimitedExecute` in place of nbgrader's
`Execute`. Output messages beyond `max_output_bytes` for one notebook are dropped (one
note says so) before they are kept in memory, so a cell printing without end cannot
exhaust the grader; error outputs are always kept, because nbgrader grades a test cell
by whether its outputs hold an error.
"""

from __future__ import annotations

import json

from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from traitlets import Integer

TRUNCATED = "... output beyond {mb} MB dropped by the grader ..."


class LimitedExecute(Execute):
    max_output_bytes = Integer(8 << 20, help="output bytes kept per notebook; error outputs are always kept").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._output_bytes = 0
        self._truncated = False
        return super().preprocess(nb, resources, km)

    def output(self, outs, msg, display_id, cell_index):
        if msg.get("msg_type") != "error":
            size = len(json.dumps(msg.get("content", {}), default=str))
            self._output_bytes = getattr(self, "_output_bytes", 0) + size
            if self._output_bytes > self.max_output_bytes:
                if not getattr(self, "_truncated", False):
                    self._truncated = True
                    outs.append(new_output("stream", name="stderr",
                                           text=TRUNCATED.format(mb=self.max_output_bytes / (1 << 20))))
                return None
        return super().output(outs, msg, display_id, cell_index)
