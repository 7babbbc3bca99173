"""Discovery: what a control method needs to know about a model before it can steer it
(emotion directions now; emotion circuits build on them)."""
