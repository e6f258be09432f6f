"""What `vlmedge run` does when told nothing: stated once, read by the run config, the CLI and the docs.

The socket addresses are part of the wire protocol and live in ``vlmedge.protocol``.
"""

DEFAULT_SOURCE = "synthetic://tabletop"  # the embedded demo scene: works with no camera attached
DEFAULT_QUERY = "the red cup"  # the default demo stream always shows one (see scenes.render)
