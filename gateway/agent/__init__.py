"""Voice agents: a caller's speech to an OpenAI-compatible LLM and its answer back as speech.

* :mod:`gateway.agent.llm` - the streaming Chat Completions client (the ``openai`` SDK);
* :mod:`gateway.agent.tools` - tools as typed Python functions, schema from the signature;
* :mod:`gateway.agent.sentences` - cutting a token stream into speakable sentences;
* :mod:`gateway.agent.conversation` - the history sent to the model and kept with the call;
* :mod:`gateway.agent.config` - the settings, and the services all agent calls share;
* :mod:`gateway.agent.bot` - the ``agent`` bot that ties them to a call.
"""
