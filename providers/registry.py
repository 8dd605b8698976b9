"""REGISTRY: the providers the gateway builds from its config (gateway/settings.py), by name."""


def _gigachat(config):
    from providers.gigachat import GigaChatProvider  # imported when used: the SDK is heavy
    return GigaChatProvider(**config["GIGACHAT"])


def _qwen(config):
    """One URL: a plain client, as it always was; a comma-separated list: a pool over them."""
    urls = [u.strip() for u in config["QWEN_URL"].split(",") if u.strip()]
    if len(urls) > 1:
        from providers.qwen_pool import QwenPoolProvider
        return QwenPoolProvider(urls, config["QWEN_TIMEOUT"], config.get("QWEN_BREAKER_COOLDOWN", 5.0),
                                config.get("QWEN_STATUS_POLL", 1.0), config.get("QWEN_AFFINITY_SLACK", 0))
    from providers.qwen import QwenProvider
    return QwenProvider(urls[0] if urls else config["QWEN_URL"], config["QWEN_TIMEOUT"])


REGISTRY = {"gigachat": _gigachat, "qwen": _qwen}  # name -> factory(config) -> Provider


def build(config) -> dict:
    """{name: Provider} for every registered provider, from the gateway's config."""
    return {name: make(config) for name, make in REGISTRY.items()}
