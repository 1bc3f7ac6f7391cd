"""One function per figure kind: ``fslib.plot.<name>(data, ax=None)``.

Compute and plot are split: these functions take results (tensors, arrays, tables) and
draw them; they never train or load a model. Sub-modules group them by chapter.
"""

from fslib.plot.adcs import *  # noqa: F401,F403
from fslib.plot.common import *  # noqa: F401,F403
from fslib.plot.compare import *  # noqa: F401,F403
from fslib.plot.dfm import *  # noqa: F401,F403
from fslib.plot.dynamics import *  # noqa: F401,F403
from fslib.plot.localization import *  # noqa: F401,F403
from fslib.plot.mitigation import *  # noqa: F401,F403
from fslib.plot.ntk import *  # noqa: F401,F403
from fslib.plot.ood import *  # noqa: F401,F403
from fslib.plot.synthetic import *  # noqa: F401,F403
