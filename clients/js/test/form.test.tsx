// @vitest-environment jsdom
// The inspector's generated forms: prefilled values, nested and optional models, JSON mode.
import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { useState } from "react";
import { afterEach, describe, expect, it } from "vitest";

import { exampleInput, InputForm } from "../inspector/form.js";
import { example, type Schema } from "../inspector/schema.js";

afterEach(cleanup);

// Pydantic's schema of: amount: int = 1; mode: Literal["chat","agent"]; tags: list[str];
// address: Address | None = None (city: str, zip: str with min_length 5); id: str(min_length=3)
const SCHEMA: Schema = {
  $defs: {
    Address: {
      properties: { city: { type: "string" }, zip: { type: "string", minLength: 5 } },
      required: ["city", "zip"],
      type: "object",
    },
  },
  properties: {
    amount: { default: 1, type: "integer" },
    mode: { enum: ["chat", "agent"], type: "string" },
    tags: { items: { type: "string" }, type: "array" },
    address: { anyOf: [{ $ref: "#/$defs/Address" }, { type: "null" }], default: null },
    id: { type: "string", minLength: 3, maxLength: 4 },
    ratio: { type: "number", exclusiveMinimum: 0 },
    title: { type: "string", examples: ["Design doc"], default: "" },
  },
  required: ["mode", "tags", "id", "ratio"],
  type: "object",
};

function Harness({ schema }: { schema: Schema | null }) {
  const [value, setValue] = useState(() => exampleInput(schema));
  return (
    <>
      <InputForm schema={schema} value={value} onChange={setValue} />
      <output data-testid="value">{JSON.stringify(value)}</output>
    </>
  );
}

const value = () => JSON.parse(screen.getByTestId("value").textContent ?? "null");

describe("generated input forms", () => {
  it("prefills values that meet the schema: defaults, examples, enums, lengths, bounds", () => {
    expect(example(SCHEMA, SCHEMA)).toEqual({
      amount: 1,
      mode: "chat",
      tags: [],
      address: null,
      id: "idx",
      ratio: 0.5,
      title: "Design doc",
    });
  });

  it("edits fields, switches an optional model on with a valid example, and edits as JSON", () => {
    render(<Harness schema={SCHEMA} />);
    fireEvent.change(screen.getByLabelText(/amount/), { target: { value: "7" } });
    fireEvent.change(screen.getByLabelText(/mode/), { target: { value: "1" } });
    fireEvent.change(screen.getByLabelText(/tags/), { target: { value: "a, b ,," } });
    expect(value()).toMatchObject({ amount: 7, mode: "agent", tags: ["a", "b"], address: null });
    expect(screen.queryByLabelText(/city/)).toBeNull(); // absent optional model: no fields
    fireEvent.click(screen.getByRole("checkbox", { name: /give address/ }));
    expect(value().address).toEqual({ city: "city", zip: "zipxx" });
    fireEvent.change(screen.getByLabelText(/city/), { target: { value: "Zürich" } });
    expect(value().address).toEqual({ city: "Zürich", zip: "zipxx" });
    fireEvent.click(screen.getByRole("button", { name: "JSON" }));
    const box = screen.getByRole("textbox");
    expect(JSON.parse((box as HTMLTextAreaElement).value).address.city).toBe("Zürich");
    fireEvent.change(box, { target: { value: '{"amount": 2' } });
    expect(screen.getByText(/not valid JSON/)).toBeTruthy();
    expect(value().amount).toBe(7); // an unfinished edit changes nothing
    fireEvent.change(box, { target: { value: '{"amount": 2}' } });
    expect(value()).toEqual({ amount: 2 });
  });

  it("an action without an input model takes any JSON, starting from null", () => {
    render(<Harness schema={null} />);
    expect(screen.getByText(/declares no input model/)).toBeTruthy();
    expect(value()).toBeNull();
    fireEvent.change(screen.getByRole("textbox"), { target: { value: '["x", 1]' } });
    expect(value()).toEqual(["x", 1]);
  });
});
