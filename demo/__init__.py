"""vaekit's local web app (installed as the `vaekit_demo` package): a thin Gradio adapter."""
