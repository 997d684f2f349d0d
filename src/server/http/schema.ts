/** Route schemas reject unknown fields (and ajv is set not to coerce types): bad input is a 400, never ignored. */
export const Strict = { additionalProperties: false } as const;
