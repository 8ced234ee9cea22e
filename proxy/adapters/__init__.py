"""Provider adapters: the client-facing API surfaces (parse a provider's wire format into a
`GenerationRequest`, render a `GenerationResult` back into it) and the upstream providers (send a
`GenerationRequest`, get a `GenerationResult`). Stages never see a wire format."""
