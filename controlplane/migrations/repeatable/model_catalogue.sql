-- Repeatable: run after the numbered migrations at every start-up (and `controlplane migrate`),
-- never recorded, so it must stay idempotent. It is data, not schema: edit it freely.
--
-- The shipped catalogue: refreshed at every start-up, except `enabled`, which an operator may
-- change in SQL to hide a model from every organization.
INSERT INTO llm_models (value, label, provider, api_model, description, recommended,
                        compatible_runtimes, capabilities, pricing, display_order) VALUES
    ('anthropic/claude-sonnet-4-5', 'Claude Sonnet 4.5', 'anthropic', NULL,
     'Best balance of intelligence, speed and cost for agents and coding', true,
     '["default", "claude_code"]',
     '{"tools": true, "vision": true, "streaming": true, "extended_thinking": true, "context_window": 200000, "max_output_tokens": 64000}',
     '{"input_per_million": 3, "output_per_million": 15, "currency": "USD"}', 10),
    ('anthropic/claude-opus-4-5', 'Claude Opus 4.5', 'anthropic', NULL,
     'Most capable model for complex, long-running agent work', false,
     '["default", "claude_code"]',
     '{"tools": true, "vision": true, "streaming": true, "extended_thinking": true, "context_window": 200000, "max_output_tokens": 64000}',
     '{"input_per_million": 5, "output_per_million": 25, "currency": "USD"}', 20),
    ('anthropic/claude-haiku-4-5', 'Claude Haiku 4.5', 'anthropic', NULL,
     'Fastest and cheapest of the current models', false,
     '["default", "claude_code"]',
     '{"tools": true, "vision": true, "streaming": true, "extended_thinking": true, "context_window": 200000, "max_output_tokens": 64000}',
     '{"input_per_million": 1, "output_per_million": 5, "currency": "USD"}', 30),
    ('anthropic/claude-opus-4-1', 'Claude Opus 4.1', 'anthropic', NULL,
     'Previous Opus generation', false,
     '["default", "claude_code"]',
     '{"tools": true, "vision": true, "streaming": true, "extended_thinking": true, "context_window": 200000, "max_output_tokens": 32000}',
     '{"input_per_million": 15, "output_per_million": 75, "currency": "USD"}', 40),
    ('anthropic/claude-sonnet-4', 'Claude Sonnet 4', 'anthropic', 'claude-sonnet-4-20250514',
     'Previous Sonnet generation', false,
     '["default", "claude_code"]',
     '{"tools": true, "vision": true, "streaming": true, "extended_thinking": true, "context_window": 200000, "max_output_tokens": 64000}',
     '{"input_per_million": 3, "output_per_million": 15, "currency": "USD"}', 50),
    ('anthropic/claude-3-5-haiku', 'Claude Haiku 3.5', 'anthropic', 'claude-3-5-haiku-20241022',
     'Older fast model', false,
     '["default", "claude_code"]',
     '{"tools": true, "vision": true, "streaming": true, "extended_thinking": false, "context_window": 200000, "max_output_tokens": 8192}',
     '{"input_per_million": 0.8, "output_per_million": 4, "currency": "USD"}', 60)
ON CONFLICT (value) WHERE organization_id IS NULL DO UPDATE SET
    label = EXCLUDED.label,
    provider = EXCLUDED.provider,
    api_model = EXCLUDED.api_model,
    description = EXCLUDED.description,
    recommended = EXCLUDED.recommended,
    compatible_runtimes = EXCLUDED.compatible_runtimes,
    capabilities = EXCLUDED.capabilities,
    pricing = EXCLUDED.pricing,
    display_order = EXCLUDED.display_order,
    updated_at = now()
WHERE (llm_models.label, llm_models.provider, llm_models.api_model, llm_models.description,
       llm_models.recommended, llm_models.compatible_runtimes, llm_models.capabilities,
       llm_models.pricing, llm_models.display_order)
      IS DISTINCT FROM
      (EXCLUDED.label, EXCLUDED.provider, EXCLUDED.api_model, EXCLUDED.description,
       EXCLUDED.recommended, EXCLUDED.compatible_runtimes, EXCLUDED.capabilities,
       EXCLUDED.pricing, EXCLUDED.display_order);
