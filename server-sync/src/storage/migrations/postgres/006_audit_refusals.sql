-- Refused pushes are audited too: their lines say `refuse`, with the refusal's code.
ALTER TABLE audit ADD COLUMN code TEXT;
