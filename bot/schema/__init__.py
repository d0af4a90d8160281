"""Which schema is each stage on: Drizzle migrations per stage, and schema drift between stages."""
