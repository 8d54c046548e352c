"""Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`) over the generation pipeline.

schemas: the wire types. adapter: a request to a GenerationPlan. assembly: ReplyEvents to a Message or to stream
events. errors: any APIError in Anthropic's error shape. sse: stream events to bytes. routes: the HTTP handlers.
"""
