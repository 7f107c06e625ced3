"""Stage functions the pipelines in `pipelines/*.toml` name: one module per export format plus
`common` (checkpoint resolution, evaluation images, manifests). A format's module imports only its
own export module."""
